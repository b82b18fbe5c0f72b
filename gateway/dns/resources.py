"""DNS resources: a granted peer asking for a resource's name gets proxy addresses.

Sans-I/O, beside the `Forwarder`: a query whose name matches a DNS resource granted to the
asking peer is answered here (A with the name's IPv4 proxy address, AAAA with its IPv6 one,
anything else with no records), after the gateway has looked up the name's real A and AAAA
records upstream; the result goes to the data plane as a `ProxyMapping` before the answer
goes to the client, so the first packet to a proxy address already finds its translation.
Any other query is the forwarder's. Answers use a short TTL, so clients ask again and the
mapping follows the real addresses; a mapping younger than `REFRESH_AFTER` is reused.

A mapping is per (name, resource) (gateway/dns/proxy.py): what one peer is granted never
moves because another peer asked for the same name under another resource.

Bounded, per peer: a peer has at most `MAX_RESOLVING_PER_PEER` names being looked up at
once (more wait their turn in order of arrival, at most `MAX_QUEUED_PER_PEER`), a name being
looked up parks at most `MAX_WAITING_PER_NAME` queries (and all names together
`MAX_WAITING`), and a peer holds at most `MAX_NAMES_PER_PEER` mappings: asking for one more
lets go of the one it asked for longest ago, which is freed when no other peer holds it. A
mapping nobody asked for in `MAPPING_IDLE` is freed too (`expire`): Firezone's longest NAT
lifetime (TCP, 2 h 4 min, RFC 5382) after the last answer's TTL, so a flow opened from an
answer is not cut for want of asking again unless it ran idle longer than the NAT keeps it.
"""

from __future__ import annotations

import ipaddress
import struct
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import dns.exception
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset

from gateway.dns.forwarder import (
    HEADER_SIZE,
    Client,
    Forwarder,
    Lookup,
    Output,
    ToClient,
    name_end,
    response_to,
)
from gateway.dns.proxy import ProxyAddresses, ProxyPair
from gateway.resources.names import NamePattern

ANSWER_TTL = 60
REFRESH_AFTER = 30.0
MAX_WAITING = 1000  # queries parked while their name is being looked up, all names
MAX_WAITING_PER_NAME = 32
MAX_RESOLVING_PER_PEER = 64  # names one peer has being looked up at once (2 lookups each)
MAX_QUEUED_PER_PEER = 500  # names asked for beyond that, waiting their turn
MAX_NAMES_PER_PEER = 4096
MAPPING_IDLE = 2 * 3600 + 4 * 60 + ANSWER_TTL  # seconds; see the module docstring

Key = tuple[bytes, int]  # (name in canonical wire form: hashed cheaply, resource)


@dataclass(frozen=True, slots=True)
class ProxyMapping:
    """For the data plane: packets to `proxies` go to these real addresses of `name`."""

    name: dns.name.Name
    resource: int  # index into the config's resources
    proxies: ProxyPair
    real_v4: tuple[ipaddress.IPv4Address, ...]
    real_v6: tuple[ipaddress.IPv6Address, ...]


Event = Output | ProxyMapping


@dataclass(frozen=True, slots=True)
class _Query:
    client: Client
    query: dns.message.Message
    wire: bytes


@dataclass(slots=True)
class _Resolution:
    key: Key
    name: dns.name.Name
    peer: Hashable  # whose quota the lookups count against
    waiting: list[_Query] = field(default_factory=list)
    answers: dict[int, list[bytes]] = field(default_factory=dict)  # rdtype -> addresses


@dataclass(slots=True)
class _Live:
    mapping: ProxyMapping
    resolved: float  # when its real addresses were looked up
    holders: set[Hashable] = field(default_factory=set)


class ResourceAnswers:
    def __init__(  # noqa: PLR0913 - the resources, their grants, who asks, and the bound
        self,
        patterns: Sequence[tuple[int, NamePattern]],
        grants: Mapping[Hashable, Iterable[int]],
        peer_of: Callable[[str], Hashable | None],
        forwarder: Forwarder,
        *,
        proxies: ProxyAddresses | None = None,
        max_names_per_peer: int = MAX_NAMES_PER_PEER,
    ) -> None:
        # Most specific pattern first: an exact name, then wildcards by depth.
        self._patterns = sorted(
            patterns, key=lambda item: (item[1].wildcard, -len(item[1].name.labels))
        )
        self._grants = {peer: frozenset(indexes) for peer, indexes in grants.items()}
        self._peer_of = peer_of
        self.forwarder = forwarder
        self.proxies = proxies if proxies is not None else ProxyAddresses()
        self.max_names_per_peer = max_names_per_peer
        self._live: OrderedDict[Key, _Live] = OrderedDict()  # least recently asked first
        self._used: dict[Key, float] = {}
        self._held: dict[Hashable, OrderedDict[Key, None]] = {}
        self._resolving: dict[Key, _Resolution] = {}
        self._resolving_by_peer: Counter[Hashable] = Counter()
        # Names a peer asked for beyond its lookups at once: started as its lookups finish.
        self._queued: dict[Hashable, deque[tuple[_Query, Key]]] = {}
        self._tokens: dict[int, tuple[_Resolution, int]] = {}
        self._next_token = 1
        self.waiting = 0

    def __len__(self) -> int:
        return len(self._live)

    def live_mappings(self) -> list[ProxyMapping]:
        """Every mapping handed out and not freed: what a new crypto process must be told."""
        return [live.mapping for live in self._live.values()]

    def held_by(self, peer: Hashable) -> int:
        return len(self._held.get(peer, ()))

    def handle_query(self, client: Client, wire: bytes, now: float) -> list[Event]:
        query = self.forwarder.parse(client, wire)
        if not isinstance(query, dns.message.Message):
            return [] if query is None else [query]
        peer = client.peer if client.peer is not None else self._peer_of(client.address)
        resource = self._match(peer, query)
        if peer is None or resource is None:
            return [self.forwarder.forward(client, query, wire, now)]
        self.forwarder.counters["resource_queries"] += 1
        key = (query.question[0].name.to_digestable(), resource)
        return self._ask(_Query(client, query, wire), peer, key, now)

    def _ask(self, asked: _Query, peer: Hashable, key: Key, now: float) -> list[Event]:
        live = self._live.get(key)
        if live is not None and now - live.resolved < REFRESH_AFTER:
            self._hold(peer, key, now)
            return [self._answer(asked, live.mapping)]
        return self._resolve(asked, peer, key, now)

    def _resolve(self, asked: _Query, peer: Hashable, key: Key, now: float) -> list[Event]:
        """Park the query on the lookup of `key`, starting it if none runs, within bounds:
        beyond the peer's lookups at once it waits its turn (in order of arrival)."""
        resolution = self._resolving.get(key)
        if resolution is not None:
            if len(resolution.waiting) >= MAX_WAITING_PER_NAME or self.waiting >= MAX_WAITING:
                return [self._fail(asked, "servfail_overload")]
            resolution.waiting.append(asked)
            self.waiting += 1
            return []
        if self.waiting >= MAX_WAITING:
            return [self._fail(asked, "servfail_overload")]
        if self._resolving_by_peer[peer] >= MAX_RESOLVING_PER_PEER:
            queued = self._queued.setdefault(peer, deque())
            if len(queued) >= MAX_QUEUED_PER_PEER:
                return [self._fail(asked, "servfail_client_quota")]
            queued.append((asked, key))
            self.waiting += 1
            return []
        resolution = self._resolving[key] = _Resolution(key, asked.query.question[0].name, peer)
        self._resolving_by_peer[peer] += 1
        resolution.waiting.append(asked)
        self.waiting += 1
        events: list[Event] = []
        for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            token = self._next_token
            self._next_token += 1
            self._tokens[token] = (resolution, rdtype)
            events.append(self.forwarder.lookup(token, resolution.name, rdtype, now))
        # A lookup can finish at once (no upstream): let handle_lookup see it.
        return self._settle_immediate(events, now)

    def _next_queued(self, peer: Hashable, now: float) -> list[Event]:
        """Start the names `peer` asked for while its lookups were all taken."""
        events: list[Event] = []
        queued = self._queued.get(peer)
        while queued and self._resolving_by_peer[peer] < MAX_RESOLVING_PER_PEER:
            asked, key = queued.popleft()
            self.waiting -= 1
            events.extend(self._ask(asked, peer, key, now))
        if queued is not None and not queued:
            del self._queued[peer]
        return events

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
        resolution.answers[rdtype] = answer_addresses(wire, rdtype)
        if len(resolution.answers) < 2:  # noqa: PLR2004 - A and AAAA
            return []
        key, peer = resolution.key, resolution.peer
        del self._resolving[key]
        self._resolving_by_peer[peer] -= 1
        if not self._resolving_by_peer[peer]:
            del self._resolving_by_peer[peer]
        self.waiting -= len(resolution.waiting)
        events = self._settle(resolution, now)
        return events + self._next_queued(peer, now)

    def _settle(self, resolution: _Resolution, now: float) -> list[Event]:
        """The mapping and the answers of a finished lookup (SERVFAIL without addresses)."""
        key = resolution.key
        v4 = resolution.answers.get(dns.rdatatype.A, [])
        v6 = resolution.answers.get(dns.rdatatype.AAAA, [])
        if not v4 and not v6:
            self.forwarder.counters["resource_unresolved"] += 1
            return [self._fail(asked, None) for asked in resolution.waiting]
        if key not in self._live and len(self._live) >= self.proxies.capacity:
            self._release(next(iter(self._live)))  # the least recently asked gives way
        mapping = ProxyMapping(
            resolution.name.canonicalize(),
            key[1],
            self.proxies.assign(resolution.name, key[1]),
            tuple(ipaddress.IPv4Address(a) for a in v4),
            tuple(ipaddress.IPv6Address(a) for a in v6),
        )
        live = self._live.get(key)
        if live is None:
            live = self._live[key] = _Live(mapping, now)
        live.mapping, live.resolved = mapping, now
        for asked in resolution.waiting:
            client = asked.client
            peer = client.peer if client.peer is not None else self._peer_of(client.address)
            if peer is not None:
                self._hold(peer, key, now)
        if key not in self._live:  # every asker let go of it at once (a bound of 0 names)
            return [self._fail(asked, None) for asked in resolution.waiting]
        return [mapping, *(self._answer(asked, mapping) for asked in resolution.waiting)]

    # ---- holding and freeing mappings -----------------------------------------------------

    def _hold(self, peer: Hashable, key: Key, now: float) -> None:
        live = self._live[key]
        live.holders.add(peer)
        self._live.move_to_end(key)
        self._used[key] = now
        held = self._held.setdefault(peer, OrderedDict())
        held[key] = None
        held.move_to_end(key)
        while len(held) > self.max_names_per_peer:
            oldest, _ = held.popitem(last=False)
            self.forwarder.counters["mappings_let_go"] += 1
            holders = self._live[oldest].holders
            holders.discard(peer)
            if not holders:
                self._release(oldest)

    def _release(self, key: Key) -> None:
        live = self._live.pop(key)
        del self._used[key]
        self.proxies.release(live.mapping.name, key[1])
        self.forwarder.counters["mappings_freed"] += 1
        for peer in live.holders:
            held = self._held.get(peer)
            if held is not None:
                held.pop(key, None)
                if not held:
                    del self._held[peer]

    def expire(self, now: float) -> int:
        """Free the mappings nobody asked for in MAPPING_IDLE; how many were freed."""
        freed = 0
        while self._live:
            key = next(iter(self._live))
            if now - self._used[key] < MAPPING_IDLE:
                break
            self._release(key)
            freed += 1
        return freed

    # ---- answers ---------------------------------------------------------------------------

    def _match(self, peer: Hashable | None, query: dns.message.Message) -> int | None:
        if not self._patterns or peer is None:
            return None
        granted = self._grants.get(peer)
        if not granted:
            return None
        name = query.question[0].name
        for index, pattern in self._patterns:
            if index in granted and pattern.matches(name):
                return index
        return None

    def _answer(self, asked: _Query, mapping: ProxyMapping) -> ToClient:
        """A with the IPv4 proxy, AAAA with the IPv6 one, other types no records; built
        from the query's bytes (its question as the client spelled it)."""
        wire = asked.wire
        end = name_end(wire)
        assert end is not None  # noqa: S101 - the forwarder parsed this query
        rdtype = asked.query.question[0].rdtype
        record = b""
        if rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            address = (
                mapping.proxies.v4 if rdtype == dns.rdatatype.A else mapping.proxies.v6
            ).packed
            record = (
                _RECORD.pack(_POINTER_TO_QUESTION, rdtype, 1, ANSWER_TTL, len(address)) + address
            )
        flags = _RESPONSE_FLAGS | (int.from_bytes(wire[2:4], "big") & _RD)
        header = wire[:2] + _HEADER.pack(flags, 1, 1 if record else 0, 0, 0)
        self.forwarder.counters["resource_answers"] += 1
        return ToClient(asked.client, header + wire[12 : end + 4] + record)

    def _fail(self, asked: _Query, reason: str | None) -> ToClient:
        if reason is not None:
            self.forwarder.counters[reason] += 1
        return ToClient(asked.client, response_to(asked.query, dns.rcode.SERVFAIL))


_HEADER = struct.Struct("!HHHHH")  # flags and the four counts, after the id
_RECORD = struct.Struct("!HHHIH")  # name pointer, type, class, TTL, data length
_POINTER_TO_QUESTION = 0xC00C  # the question's name, at offset 12
_RD = 0x0100
_RESPONSE_FLAGS = 0x8000 | 0x0400 | 0x0080  # QR, AA (the gateway owns these answers), RA


def answer_addresses(wire: bytes, rdtype: int) -> list[bytes]:
    """The addresses (4 or 16 bytes) of the answer section's `rdtype` records, class IN,
    read from the bytes (a lookup's answer; dnspython's parser costs more than the rest);
    [] when the message is malformed."""
    size = 4 if rdtype == dns.rdatatype.A else 16
    try:
        questions, records = struct.unpack_from("!HH", wire, 4)
        at = HEADER_SIZE
        for _ in range(questions):
            at = _skip_name(wire, at) + 4
        found = []
        for _ in range(records):
            at = _skip_name(wire, at)
            kind, klass, _, length = struct.unpack_from("!HHIH", wire, at)
            at += 10
            if at + length > len(wire):
                return []
            if kind == rdtype and klass == 1 and length == size:
                found.append(wire[at : at + length])
            at += length
    except (IndexError, struct.error):
        return []
    return found


def _skip_name(wire: bytes, at: int) -> int:
    """Past the name at `at` (labels, ending in the root or a compression pointer)."""
    while True:
        length = wire[at]
        if length & 0xC0 == 0xC0:  # noqa: PLR2004 - a compression pointer's two bits
            return at + 2
        if length & 0xC0:
            raise IndexError("reserved label type")
        at += length + 1
        if length == 0:
            return at
