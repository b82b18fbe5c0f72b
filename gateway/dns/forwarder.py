"""The DNS forwarder's state, without sockets: queries in, datagrams out, a clock passed in.

Peers send queries through the tunnel to the gateway; each goes to one upstream server
(round robin) under an id the gateway picks at random, so the upstream's answer is matched
by (upstream, transport, id) and handed back to the client it belongs to under the client's
own id. Two clients (or one client on two sockets) that use the same id at the same time get
their own answers, and an answer that matches nothing pending (late, spoofed, or for another
question) is dropped and counted. Keying pending queries by the client's id alone mixed up
answers when clients reused ids across servers; the gateway's own id avoids that.

Bounded and fair: at most `max_in_flight` queries wait at once, of which `lookup_reserve`
only for the gateway's own lookups (DNS resources), and one client (its peer, else its
address) holds at most `max_per_client`; beyond that the client gets SERVFAIL. Each waits at
most `timeout` seconds (then SERVFAIL). A truncated UDP answer is retried over TCP under the
same pending entry; an answer larger than a UDP client can take (its EDNS size, 512 without
EDNS) reaches it truncated (TC, question only), so a small query never buys a large answer.

Forgery: besides the random id, the name sent upstream has its letters' case randomised
(0x20, draft-vixie-dnsext-dns0x20) and an answer must echo it exactly; the client gets its
own spelling back. Malformed queries get FORMERR when their header can be read and are
dropped otherwise; the header (QR, opcode, one question) is checked before the message is
parsed, and it is parsed once. Every outcome is counted in `counters`.
"""

from __future__ import annotations

import heapq
import random
import secrets
from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
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
DEFAULT_LOOKUP_RESERVE = 200  # in-flight slots clients cannot take: DNS resources' lookups
DEFAULT_MAX_PER_CLIENT = 100
HEADER_SIZE = 12
MAX_ID = 0xFFFF
MIN_UDP_PAYLOAD = 512  # RFC 1035: what every UDP client takes; EDNS may say more
_QR = 0x8000
_TC = 0x0200
_RD = 0x0100
_RA = 0x0080
_COMPRESSED = 0xC0


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
    # Whose quota the query counts against (the peer owning the address); None: the address.
    peer: Hashable | None = field(default=None, compare=False)

    @property
    def owner(self) -> Hashable:
        return self.peer if self.peer is not None else self.address


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
    query: bytes  # as sent upstream, with the gateway's id and the name's case randomised
    deadline: float
    client_name: bytes  # the question's name as the client spelled it (wire form)
    udp_limit: int  # the largest answer the client takes over UDP; 0: no limit (TCP, lookups)


class Forwarder:
    def __init__(  # noqa: PLR0913 - the bounds, keyword-only
        self,
        upstreams: Sequence[Endpoint],
        *,
        timeout: float = DEFAULT_TIMEOUT,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        lookup_reserve: int = DEFAULT_LOOKUP_RESERVE,
        max_per_client: int = DEFAULT_MAX_PER_CLIENT,
        rng: random.Random | None = None,
    ) -> None:
        self.upstreams = tuple(upstreams)
        self.timeout = timeout
        self.max_in_flight = max_in_flight
        self.lookup_reserve = min(lookup_reserve, max_in_flight)
        self.max_per_client = max_per_client
        self._rng = rng if rng is not None else secrets.SystemRandom()
        self._next_upstream = 0
        self._pending: dict[tuple[Endpoint, Transport, int], _Pending] = {}
        self._deadlines: list[tuple[float, int, tuple[Endpoint, Transport, int]]] = []
        self._sequence = 0
        self._per_client: Counter[Hashable] = Counter()
        self._clients_in_flight = 0
        self.counters: Counter[str] = Counter()

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def in_flight_for(self, owner: Hashable) -> int:
        return self._per_client[owner]

    # ---- from clients --------------------------------------------------------------------

    def handle_query(self, client: Client, wire: bytes, now: float) -> Output | None:
        """A query from a peer: what to send upstream, or the answer to give at once."""
        query = self.parse(client, wire)
        if not isinstance(query, dns.message.Message):
            return query
        return self.forward(client, query, wire, now)

    def parse(self, client: Client, wire: bytes) -> dns.message.Message | ToClient | None:
        """The query in `wire`, or the answer refusing it, or None to drop it. The header is
        checked first, so a message that is no single-question query is never parsed."""
        self.counters["queries"] += 1
        if len(wire) < HEADER_SIZE:
            self.counters["dropped_malformed"] += 1
            return None
        flags = int.from_bytes(wire[2:4], "big")
        if flags & _QR:
            self.counters["dropped_malformed"] += 1
            return None  # a response sent to the server
        if (flags >> 11) & 0xF != dns.opcode.QUERY:
            return self._refuse(client, wire, dns.rcode.NOTIMP, "notimp")
        if int.from_bytes(wire[4:6], "big") != 1 or name_end(wire) is None:
            return self._refuse(client, wire, dns.rcode.FORMERR, "formerr")
        try:
            return dns.message.from_wire(wire)
        except (dns.exception.DNSException, ValueError, UnicodeError):
            return self._refuse(client, wire, dns.rcode.FORMERR, "formerr")

    def forward(
        self, client: Client, query: dns.message.Message, wire: bytes, now: float
    ) -> Output:
        """Send a parsed query (from `parse`) upstream, or refuse it when over a bound."""
        reason = None
        if not self.upstreams:
            reason = "servfail_no_upstream"
        elif self._clients_in_flight >= self.max_in_flight - self.lookup_reserve:
            reason = "servfail_overload"
        elif self._per_client[client.owner] >= self.max_per_client:
            reason = "servfail_client_quota"
        if reason is not None:
            self.counters[reason] += 1
            return ToClient(client, response_to(query, dns.rcode.SERVFAIL))
        self.counters["forwarded"] += 1
        limit = 0
        if client.transport is Transport.UDP:
            limit = max(MIN_UDP_PAYLOAD, query.payload) if query.edns >= 0 else MIN_UDP_PAYLOAD
        return self._send(client, client.transport, query.id, wire, now, udp_limit=limit)

    def lookup(
        self, token: int, name: dns.name.Name, rdtype: dns.rdatatype.RdataType, now: float
    ) -> Output:
        """Ask the upstreams for `name` on the gateway's own behalf; the answer comes back as
        `ToClient(Lookup(token), ...)` (or a SERVFAIL after the timeout, or at once when no
        upstream is configured or too many queries are in flight)."""
        self.counters["lookups"] += 1
        if not self.upstreams or len(self._pending) >= self.max_in_flight:
            query = dns.message.make_query(name, rdtype)
            return ToClient(Lookup(token), response_to(query, dns.rcode.SERVFAIL))
        # Built from bytes (dnspython's make_query costs more than the rest of a lookup):
        # id 0 (replaced), RD, one question, class IN.
        wire = b"\x00\x00\x01\x00\x00\x01" + bytes(6) + name.to_digestable()
        wire += int(rdtype).to_bytes(2, "big") + b"\x00\x01"
        return self._send(Lookup(token), Transport.UDP, 0, wire, now, udp_limit=0)

    def _send(  # noqa: PLR0913 - one pending entry's fields
        self,
        client: Client | Lookup,
        transport: Transport,
        client_id: int,
        wire: bytes,
        now: float,
        *,
        udp_limit: int,
    ) -> ToUpstream:
        upstream = self.upstreams[self._next_upstream % len(self.upstreams)]
        self._next_upstream += 1
        gateway_id = self._free_id(upstream, transport)
        end = name_end(wire)
        assert end is not None  # noqa: S101 - parse() refused such a query; make_query never makes one
        sent = gateway_id.to_bytes(2, "big") + wire[2:HEADER_SIZE]
        sent += _randomise_case(wire[HEADER_SIZE:end], self._rng.getrandbits(end)) + wire[end:]
        pending = _Pending(
            client=client,
            client_id=client_id,
            query=sent,
            deadline=now + self.timeout,
            client_name=wire[HEADER_SIZE:end],
            udp_limit=udp_limit,
        )
        key = (upstream, transport, gateway_id)
        self._pending[key] = pending
        if isinstance(client, Client):
            self._per_client[client.owner] += 1
            self._clients_in_flight += 1
        self._sequence += 1
        heapq.heappush(self._deadlines, (pending.deadline, self._sequence, key))
        return ToUpstream(upstream, transport, sent)

    def _free_id(self, upstream: Endpoint, transport: Transport) -> int:
        # At most max_in_flight ids are taken of 65536, so a random draw is free almost always.
        while True:
            candidate = self._rng.randrange(MAX_ID + 1)
            if (upstream, transport, candidate) not in self._pending:
                return candidate

    def _refuse(
        self, client: Client, wire: bytes, rcode: dns.rcode.Rcode, reason: str
    ) -> ToClient | None:
        """An answer with `rcode` to a query that was not (or could not be) parsed."""
        self.counters[reason] += 1
        if int.from_bytes(wire[4:6], "big") != 1 or name_end(wire) is None:
            return ToClient(client, _header_only(wire, rcode))
        answer = error_response(wire, rcode)
        return None if answer is None else ToClient(client, answer)

    def _finish(self, key: tuple[Endpoint, Transport, int]) -> _Pending:
        pending = self._pending.pop(key)
        if isinstance(pending.client, Client):
            owner = pending.client.owner
            self._per_client[owner] -= 1
            if not self._per_client[owner]:
                del self._per_client[owner]
            self._clients_in_flight -= 1
        return pending

    # ---- from upstreams ------------------------------------------------------------------

    def handle_response(
        self, upstream: Endpoint, transport: Transport, wire: bytes, now: float
    ) -> Output | None:
        """An answer from an upstream: the answer for its client, a TCP retry, or None."""
        matched = self._match_response(upstream, transport, wire)
        if matched is None:
            self.counters["unmatched_responses"] += 1
            return None
        key, pending, flags = matched
        end = HEADER_SIZE + len(pending.client_name)
        self._finish(key)
        if flags & _TC and transport is Transport.UDP:
            self.counters["retried_over_tcp"] += 1
            retry_key = (upstream, Transport.TCP, key[2])
            if retry_key in self._pending:  # that id is taken over TCP: pick another
                retry_key = (upstream, Transport.TCP, self._free_id(upstream, Transport.TCP))
                pending.query = retry_key[2].to_bytes(2, "big") + pending.query[2:]
            pending.deadline = now + self.timeout
            self._pending[retry_key] = pending
            if isinstance(pending.client, Client):
                self._per_client[pending.client.owner] += 1
                self._clients_in_flight += 1
            self._sequence += 1
            heapq.heappush(self._deadlines, (pending.deadline, self._sequence, retry_key))
            return ToUpstream(upstream, Transport.TCP, pending.query)
        self.counters["answered"] += 1
        answer = pending.client_id.to_bytes(2, "big") + wire[2:HEADER_SIZE]
        answer += pending.client_name + wire[end:]
        if pending.udp_limit and len(answer) > pending.udp_limit:
            self.counters["truncated"] += 1
            answer = _truncated(answer, end + 4)
        return ToClient(pending.client, answer)

    def _match_response(
        self, upstream: Endpoint, transport: Transport, wire: bytes
    ) -> tuple[tuple[Endpoint, Transport, int], _Pending, int] | None:
        """The pending query `wire` answers and its header's flags, or None (late, spoofed,
        or not an answer). Read from the header and question only: the answer is not
        parsed (a large one costs milliseconds in dnspython), the client reads it."""
        if len(wire) < HEADER_SIZE:
            return None
        key = (upstream, transport, int.from_bytes(wire[:2], "big"))
        pending = self._pending.get(key)
        if pending is None:
            return None
        flags = int.from_bytes(wire[2:4], "big")
        end = HEADER_SIZE + len(pending.client_name) + 4  # the name, its type and class
        if not flags & _QR or wire[4:6] != b"\x00\x01":
            return None
        if wire[HEADER_SIZE:end] != pending.query[HEADER_SIZE:end]:
            return None  # another question, or not the name we sent letter for letter
        return key, pending, flags

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
            self._finish(key)
            self.counters["servfail_timeout"] += 1
            answers.append(ToClient(pending.client, _servfail_for(pending)))
        return answers

    def _drop_stale_deadlines(self) -> None:
        while self._deadlines:
            deadline, _, key = self._deadlines[0]
            pending = self._pending.get(key)
            if pending is not None and pending.deadline == deadline:
                return
            heapq.heappop(self._deadlines)


def name_end(wire: bytes) -> int | None:
    """Where the first question's name ends in `wire` (one past its root label), or None when
    it does not end inside the message or uses compression (a question's name never may)."""
    at = HEADER_SIZE
    while at < len(wire):
        length = wire[at]
        if length == 0:
            return at + 1
        if length & _COMPRESSED:
            return None
        at += length + 1
    return None


def _randomise_case(name: bytes, bits: int) -> bytes:
    """`name` (wire form) with each letter's case flipped where `bits` (random) has a one."""
    out = bytearray(name)
    at = 0
    while at < len(out) and out[at]:
        for index in range(at + 1, at + 1 + out[at]):
            if bits >> index & 1 and (0x41 <= out[index] <= 0x5A or 0x61 <= out[index] <= 0x7A):  # noqa: PLR2004 - ASCII A-Z, a-z
                out[index] ^= 0x20
        at += out[at] + 1
    return bytes(out)


def _truncated(answer: bytes, question_end: int) -> bytes:
    """`answer` cut to its header and question, with TC: the client asks again over TCP."""
    flags = int.from_bytes(answer[2:4], "big") | _TC
    return answer[:2] + flags.to_bytes(2, "big") + b"\x00\x01" + bytes(6) + answer[12:question_end]


def _servfail_for(pending: _Pending) -> bytes:
    """SERVFAIL to a pending query, its question as the client spelled it, without parsing."""
    end = HEADER_SIZE + len(pending.client_name)
    flags = _QR | _RA | (int.from_bytes(pending.query[2:4], "big") & _RD) | dns.rcode.SERVFAIL
    header = pending.client_id.to_bytes(2, "big") + flags.to_bytes(2, "big") + b"\x00\x01"
    return header + bytes(6) + pending.client_name + pending.query[end : end + 4]


def _header_only(wire: bytes, rcode: dns.rcode.Rcode) -> bytes:
    """A response with `rcode` and no sections: the query's questions were not read."""
    flags = _QR | (int.from_bytes(wire[2:4], "big") & (_RD | 0x7800)) | int(rcode)
    return wire[:2] + flags.to_bytes(2, "big") + bytes(8)


def response_to(query: dns.message.Message, rcode: dns.rcode.Rcode) -> bytes:
    response = dns.message.make_response(query)
    response.set_rcode(rcode)
    return response.to_wire()


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
