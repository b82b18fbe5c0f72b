"""DNS resources: a granted peer asking for a resource's name gets proxy addresses.

Sans-I/O, beside the `Forwarder`: a query whose name matches a DNS resource granted to the
asking peer is answered here (A with the name's IPv4 proxy address, AAAA with its IPv6 one,
anything else with no records), after the gateway has looked up the name's real A and AAAA
records upstream; the result goes to the data plane as a `ProxyMapping` before the answer
goes to the client, so the first packet to a proxy address already finds its translation.
Any other query is the forwarder's. Answers use a short TTL, so clients ask again and the
mapping follows the real addresses; a mapping younger than `REFRESH_AFTER` is reused.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset

from gateway.dns.forwarder import Client, Forwarder, Lookup, Output, ToClient, error_response
from gateway.dns.proxy import ProxyAddresses, ProxyPair
from gateway.resources.names import NamePattern

ANSWER_TTL = 60
REFRESH_AFTER = 30.0
MAX_WAITING = 1000  # queries parked while their name is being looked up


@dataclass(frozen=True, slots=True)
class ProxyMapping:
    """For the data plane: packets to `proxies` go to these real addresses of `name`."""

    name: dns.name.Name
    resource: int  # index into the config's resources
    proxies: ProxyPair
    real_v4: tuple[ipaddress.IPv4Address, ...]
    real_v6: tuple[ipaddress.IPv6Address, ...]


Event = Output | ProxyMapping


@dataclass(slots=True)
class _Resolution:
    name: dns.name.Name
    resource: int
    waiting: list[tuple[Client, dns.message.Message]] = field(default_factory=list)
    answers: dict[int, dns.message.Message | None] = field(default_factory=dict)


class ResourceAnswers:
    def __init__(
        self,
        patterns: Sequence[tuple[int, NamePattern]],
        grants: Mapping[Hashable, Iterable[int]],
        peer_of: Callable[[str], Hashable | None],
        forwarder: Forwarder,
        *,
        proxies: ProxyAddresses | None = None,
    ) -> None:
        # Most specific pattern first: an exact name, then wildcards by depth.
        self._patterns = sorted(
            patterns, key=lambda item: (item[1].wildcard, -len(item[1].name.labels))
        )
        self._grants = {peer: frozenset(indexes) for peer, indexes in grants.items()}
        self._peer_of = peer_of
        self.forwarder = forwarder
        self.proxies = proxies if proxies is not None else ProxyAddresses()
        self._mappings: dict[dns.name.Name, tuple[float, ProxyMapping]] = {}
        self._resolving: dict[dns.name.Name, _Resolution] = {}
        self._tokens: dict[int, tuple[_Resolution, int]] = {}
        self._next_token = 1
        self.waiting = 0

    def handle_query(self, client: Client, wire: bytes, now: float) -> list[Event]:
        resource, query = self._match(client, wire)
        if resource is None or query is None:
            output = self.forwarder.handle_query(client, wire, now)
            return [] if output is None else [output]
        self.forwarder.counters["resource_queries"] += 1
        name = query.question[0].name.canonicalize()
        cached = self._mappings.get(name)
        if (
            cached is not None
            and now - cached[0] < REFRESH_AFTER
            and cached[1].resource == resource
        ):
            return [self._answer(client, query, cached[1])]
        resolution = self._resolving.get(name)
        if resolution is None:
            if self.waiting >= MAX_WAITING:
                return self._fail(client, query, "servfail_overload")
            resolution = self._resolving[name] = _Resolution(name, resource)
            events: list[Event] = []
            for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
                token = self._next_token
                self._next_token += 1
                self._tokens[token] = (resolution, rdtype)
                events.append(self.forwarder.lookup(token, name, rdtype, now))
            resolution.waiting.append((client, query))
            self.waiting += 1
            # A lookup can finish at once (no upstream): let handle_lookup see it.
            return self._settle_immediate(events, now)
        resolution.waiting.append((client, query))
        self.waiting += 1
        return []

    def _settle_immediate(self, events: list[Event], now: float) -> list[Event]:
        out: list[Event] = []
        for event in events:
            if isinstance(event, ToClient) and isinstance(event.client, Lookup):
                out.extend(self.handle_lookup(event.client, event.wire, now))
            else:
                out.append(event)
        return out

    def handle_lookup(self, lookup: Lookup, wire: bytes, now: float) -> list[Event]:
        """The upstream's answer (or SERVFAIL) to one of our own lookups."""
        entry = self._tokens.pop(lookup.token, None)
        if entry is None:
            return []
        resolution, rdtype = entry
        try:
            resolution.answers[rdtype] = dns.message.from_wire(wire)
        except (dns.exception.DNSException, ValueError, UnicodeError):
            resolution.answers[rdtype] = None
        if len(resolution.answers) < 2:  # noqa: PLR2004 - A and AAAA
            return []
        del self._resolving[resolution.name]
        self.waiting -= len(resolution.waiting)
        v4 = tuple(self._addresses(resolution.answers.get(dns.rdatatype.A), dns.rdatatype.A))
        v6 = tuple(self._addresses(resolution.answers.get(dns.rdatatype.AAAA), dns.rdatatype.AAAA))
        if not v4 and not v6:
            self.forwarder.counters["resource_unresolved"] += 1
            events: list[Event] = []
            for client, query in resolution.waiting:
                events.extend(self._fail(client, query, None))
            return events
        mapping = ProxyMapping(
            resolution.name,
            resolution.resource,
            self.proxies.assign(resolution.name),
            tuple(ipaddress.IPv4Address(a) for a in v4),
            tuple(ipaddress.IPv6Address(a) for a in v6),
        )
        self._mappings[resolution.name] = (now, mapping)
        if len(self._mappings) > self.proxies.capacity:
            self._mappings.pop(next(iter(self._mappings)))
        return [mapping, *(self._answer(c, q, mapping) for c, q in resolution.waiting)]

    @staticmethod
    def _addresses(message: dns.message.Message | None, rdtype: int) -> list[str]:
        if message is None:
            return []
        return [
            item.to_text() for rrset in message.answer if rrset.rdtype == rdtype for item in rrset
        ]

    def _match(self, client: Client, wire: bytes) -> tuple[int | None, dns.message.Message | None]:
        if not self._patterns:
            return None, None
        peer = self._peer_of(client.address)
        granted = self._grants.get(peer) if peer is not None else None
        if not granted:
            return None, None
        try:
            query = dns.message.from_wire(wire)
        except (dns.exception.DNSException, ValueError, UnicodeError):
            return None, None  # the forwarder answers FORMERR
        if len(query.question) != 1 or query.flags & dns.flags.QR:
            return None, None
        name = query.question[0].name
        for index, pattern in self._patterns:
            if index in granted and pattern.matches(name):
                return index, query
        return None, None

    def _answer(
        self, client: Client, query: dns.message.Message, mapping: ProxyMapping
    ) -> ToClient:
        response = dns.message.make_response(query)
        question = query.question[0]
        if question.rdtype == dns.rdatatype.A:
            address = str(mapping.proxies.v4)
        elif question.rdtype == dns.rdatatype.AAAA:
            address = str(mapping.proxies.v6)
        else:
            address = ""  # no records of other types for a resource's name
        if address:
            response.answer.append(
                dns.rrset.from_text(question.name, ANSWER_TTL, "IN", question.rdtype, address)
            )
        self.forwarder.counters["resource_answers"] += 1
        return ToClient(client, response.to_wire())

    def _fail(self, client: Client, query: dns.message.Message, reason: str | None) -> list[Event]:
        if reason is not None:
            self.forwarder.counters[reason] += 1
        answer = error_response(query.to_wire(), dns.rcode.SERVFAIL)
        return [] if answer is None else [ToClient(client, answer)]
