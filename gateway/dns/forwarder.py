"""The DNS forwarder's state, without sockets: queries in, datagrams out, a clock passed in.

Peers send queries through the tunnel to the gateway; each goes to one upstream server
(round robin) under an id the gateway picks at random, so the upstream's answer is matched
by (upstream, transport, id) and handed back to the client it belongs to under the client's
own id. Two clients (or one client on two sockets) that use the same id at the same time get
their own answers, and an answer that matches nothing pending (late, spoofed, or for another
question) is dropped and counted. Keying pending queries by the client's id alone mixed up
answers when clients reused ids across servers; the gateway's own id avoids that.

Bounded: at most `max_in_flight` queries wait at once (beyond that the client gets SERVFAIL),
and each waits at most `timeout` seconds (then SERVFAIL). A truncated UDP answer is retried
over TCP under the same pending entry. Malformed queries get FORMERR when their header can be
read and are dropped otherwise; every outcome is counted in `counters`.
"""

from __future__ import annotations

import heapq
import random
import secrets
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdatatype

from gateway.endpoint import Endpoint

DEFAULT_TIMEOUT = 5.0
DEFAULT_MAX_IN_FLIGHT = 1000
HEADER_SIZE = 12
MAX_ID = 0xFFFF


class Transport(StrEnum):
    UDP = "udp"
    TCP = "tcp"


@dataclass(frozen=True, slots=True)
class Client:
    """Who asked: the peer's address and port, which of the server's sockets it asked
    (so the answer leaves from the address the query went to), and for TCP which connection."""

    transport: Transport
    address: str
    port: int
    listener: int = 0
    connection: int = 0


@dataclass(frozen=True, slots=True)
class Lookup:
    """A question the gateway asks for itself (the real addresses behind a DNS resource)."""

    token: int


@dataclass(frozen=True, slots=True)
class ToUpstream:
    upstream: Endpoint
    transport: Transport
    wire: bytes


@dataclass(frozen=True, slots=True)
class ToClient:
    """An answer for `client`; for a `Lookup`, the upstream's answer to the gateway itself."""

    client: Client | Lookup
    wire: bytes


Output = ToUpstream | ToClient


@dataclass(slots=True)
class _Pending:
    client: Client | Lookup
    client_id: int
    question: tuple[object, ...]
    query: bytes  # as sent upstream, with the gateway's id
    deadline: float


class Forwarder:
    def __init__(
        self,
        upstreams: Sequence[Endpoint],
        *,
        timeout: float = DEFAULT_TIMEOUT,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        rng: random.Random | None = None,
    ) -> None:
        self.upstreams = tuple(upstreams)
        self.timeout = timeout
        self.max_in_flight = max_in_flight
        self._rng = rng if rng is not None else secrets.SystemRandom()
        self._next_upstream = 0
        self._pending: dict[tuple[Endpoint, Transport, int], _Pending] = {}
        self._deadlines: list[tuple[float, int, tuple[Endpoint, Transport, int]]] = []
        self._sequence = 0
        self.counters: Counter[str] = Counter()

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    # ---- from clients --------------------------------------------------------------------

    def handle_query(self, client: Client, wire: bytes, now: float) -> Output | None:
        """A query from a peer: what to send upstream, or the answer to give at once."""
        self.counters["queries"] += 1
        query = self._admit(wire)
        if not isinstance(query, dns.message.Message):
            if query is None:
                self.counters["dropped_malformed"] += 1
                return None
            rcode, reason = query
            return self._refuse(client, wire, rcode, reason)
        self.counters["forwarded"] += 1
        return self._send(client, client.transport, query, wire, now)

    def lookup(
        self, token: int, name: dns.name.Name, rdtype: dns.rdatatype.RdataType, now: float
    ) -> Output:
        """Ask the upstreams for `name` on the gateway's own behalf; the answer comes back as
        `ToClient(Lookup(token), ...)` (or a SERVFAIL after the timeout, or at once when no
        upstream is configured or too many queries are in flight)."""
        query = dns.message.make_query(name, rdtype)
        wire = query.to_wire()
        self.counters["lookups"] += 1
        if not self.upstreams or len(self._pending) >= self.max_in_flight:
            failure = dns.message.make_response(query)
            failure.set_rcode(dns.rcode.SERVFAIL)
            return ToClient(Lookup(token), failure.to_wire())
        return self._send(Lookup(token), Transport.UDP, query, wire, now)

    def _send(
        self,
        client: Client | Lookup,
        transport: Transport,
        query: dns.message.Message,
        wire: bytes,
        now: float,
    ) -> ToUpstream:
        upstream = self.upstreams[self._next_upstream % len(self.upstreams)]
        self._next_upstream += 1
        gateway_id = self._free_id(upstream, transport)
        sent = gateway_id.to_bytes(2, "big") + wire[2:]
        pending = _Pending(
            client=client,
            client_id=query.id,
            question=_question(query),
            query=sent,
            deadline=now + self.timeout,
        )
        key = (upstream, transport, gateway_id)
        self._pending[key] = pending
        self._sequence += 1
        heapq.heappush(self._deadlines, (pending.deadline, self._sequence, key))
        return ToUpstream(upstream, transport, sent)

    def _admit(  # noqa: PLR0911 - one early return per reason to refuse
        self, wire: bytes
    ) -> dns.message.Message | tuple[dns.rcode.Rcode, str] | None:
        """The parsed query; or the rcode and reason to refuse it with; or None to drop it."""
        if len(wire) < HEADER_SIZE:
            return None
        try:
            query = dns.message.from_wire(wire)
        except (dns.exception.DNSException, ValueError, UnicodeError):
            return dns.rcode.FORMERR, "formerr"
        if query.flags & dns.flags.QR:
            return None  # a response sent to the server
        if query.opcode() != dns.opcode.QUERY:
            return dns.rcode.NOTIMP, "notimp"
        if len(query.question) != 1:
            return dns.rcode.FORMERR, "formerr"
        if not self.upstreams:
            return dns.rcode.SERVFAIL, "servfail_no_upstream"
        if len(self._pending) >= self.max_in_flight:
            return dns.rcode.SERVFAIL, "servfail_overload"
        return query

    def _free_id(self, upstream: Endpoint, transport: Transport) -> int:
        # At most max_in_flight ids are taken of 65536, so a random draw is free almost always.
        while True:
            candidate = self._rng.randrange(MAX_ID + 1)
            if (upstream, transport, candidate) not in self._pending:
                return candidate

    def _refuse(
        self, client: Client, wire: bytes, rcode: dns.rcode.Rcode, reason: str
    ) -> ToClient | None:
        self.counters[reason] += 1
        answer = error_response(wire, rcode)
        return None if answer is None else ToClient(client, answer)

    # ---- from upstreams ------------------------------------------------------------------

    def handle_response(
        self, upstream: Endpoint, transport: Transport, wire: bytes, now: float
    ) -> Output | None:
        """An answer from an upstream: the answer for its client, a TCP retry, or None."""
        if len(wire) < HEADER_SIZE:
            self.counters["unmatched_responses"] += 1
            return None
        key = (upstream, transport, int.from_bytes(wire[:2], "big"))
        pending = self._pending.get(key)
        if pending is None:
            self.counters["unmatched_responses"] += 1
            return None
        try:
            response = dns.message.from_wire(wire)
        except (dns.exception.DNSException, ValueError, UnicodeError):
            self.counters["unmatched_responses"] += 1
            return None  # keep waiting: the real answer may still come
        if not response.flags & dns.flags.QR or _question(response) != pending.question:
            self.counters["unmatched_responses"] += 1
            return None
        del self._pending[key]
        if response.flags & dns.flags.TC and transport is Transport.UDP:
            self.counters["retried_over_tcp"] += 1
            retry_key = (upstream, Transport.TCP, key[2])
            if retry_key in self._pending:  # that id is taken over TCP: pick another
                retry_key = (upstream, Transport.TCP, self._free_id(upstream, Transport.TCP))
                pending.query = retry_key[2].to_bytes(2, "big") + pending.query[2:]
            pending.deadline = now + self.timeout
            self._pending[retry_key] = pending
            self._sequence += 1
            heapq.heappush(self._deadlines, (pending.deadline, self._sequence, retry_key))
            return ToUpstream(upstream, Transport.TCP, pending.query)
        self.counters["answered"] += 1
        return ToClient(pending.client, pending.client_id.to_bytes(2, "big") + wire[2:])

    # ---- time ----------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        self._drop_stale_deadlines()
        return self._deadlines[0][0] if self._deadlines else None

    def expire(self, now: float) -> list[ToClient]:
        """SERVFAIL for every query whose upstream did not answer in time."""
        answers = []
        while self._deadlines and self._deadlines[0][0] <= now:
            deadline, _, key = heapq.heappop(self._deadlines)
            pending = self._pending.get(key)
            if pending is None or pending.deadline != deadline:
                continue  # answered, or retried over TCP with a later deadline
            del self._pending[key]
            self.counters["servfail_timeout"] += 1
            answer = error_response(pending.query, dns.rcode.SERVFAIL, pending.client_id)
            if answer is not None:
                answers.append(ToClient(pending.client, answer))
        return answers

    def _drop_stale_deadlines(self) -> None:
        while self._deadlines:
            deadline, _, key = self._deadlines[0]
            pending = self._pending.get(key)
            if pending is not None and pending.deadline == deadline:
                return
            heapq.heappop(self._deadlines)


def _question(message: dns.message.Message) -> tuple[object, ...]:
    return tuple((q.name, q.rdtype, q.rdclass) for q in message.question)


def error_response(
    wire: bytes, rcode: dns.rcode.Rcode, query_id: int | None = None
) -> bytes | None:
    """A response with `rcode` to the query in `wire`, echoing its question when it parses.

    None when not even the header is there. `query_id` replaces the id in `wire`.
    """
    if len(wire) < HEADER_SIZE:
        return None
    ident = int.from_bytes(wire[:2], "big") if query_id is None else query_id
    try:
        query = dns.message.from_wire(wire)
    except (dns.exception.DNSException, ValueError, UnicodeError):
        response = dns.message.Message(id=ident)
        response.flags = dns.flags.QR | (int.from_bytes(wire[2:4], "big") & dns.flags.RD)
        response.set_rcode(rcode)
        return response.to_wire()
    response = dns.message.make_response(query)
    response.id = ident
    response.set_rcode(rcode)
    return response.to_wire()
