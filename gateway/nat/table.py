"""The NAT table: which translated flow belongs to which peer, and for how long.

A peer sends to a proxy address (`inside`); the gateway sends the same flow to a real address
of the name (`outside`), from `outside_source` (the peer's own address of that family, or the
gateway's when the families differ) and, when that (address, port) pair is already taken
toward that real address, another port: a random one, at most `PORT_TRIES` tries (O(1) a
flow; a scan cost up to 65,535 tries once one peer had sprayed the ports). The peer quota keeps
the ports taken toward one (real address, port, protocol) from one outside source below
`peer_quota` of the 64,512 tried, so at the default quota eight tries all fail with odds below
1e-7; a free-port set per key would cost memory per key and buy nothing at these odds. Random
ports also keep the peer's other outside ports unguessable. Replies match the outside key and
go back to the peer as coming from the proxy address. Flows are TCP/UDP ports or ICMP echo
identifiers.

Lifetimes (Firezone's, after RFC 5382 for TCP): an entry nothing has answered yet lives 60 s;
once answered, TCP lives 2 h 4 min after its last packet, UDP and ICMP 2 min; a FIN seen in
both directions leaves 5 s; an RST ends the entry at once.

Shared fairly: at most `max_entries` in all and `peer_quota` per peer (an eighth of the table
by default, so one peer never takes it all). A peer at its quota makes room by evicting its
own oldest unanswered entry; a full table evicts the oldest unanswered entry of any peer (the
peers at their quota have none: they evicted their own). Answered flows are never evicted: a
new flow that finds none to evict is refused (`Refused`; the caller answers with ICMP
unreachable and counts the reason); `evicted` counts the evictions.
No clock inside: every call takes `now`, and `expire(now)` removes what is due.

Deadlines: a packet only moves `Entry.expires`; the heap holds one deadline per entry (and
stale ones of removed entries, compacted when they outnumber the live ones), so the
per-packet cost is O(1). An entry whose heap deadline comes before its `expires` is pushed
again at that point; one whose lifetime shrinks (FIN seen both ways) is pushed at once.
"""

from __future__ import annotations

import heapq
import ipaddress
import random
from collections import Counter, OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass, field
from enum import StrEnum

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

IPPROTO_ICMP = 1
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_ICMPV6 = 58

UNCONFIRMED_TTL = 60.0
TCP_TTL = 2 * 3600 + 4 * 60
UDP_TTL = 120.0
ICMP_TTL = 120.0
FIN_TTL = 5.0
DEFAULT_MAX_ENTRIES = 65536
DEFAULT_PEER_QUOTA = DEFAULT_MAX_ENTRIES // 8
FIRST_RANDOM_PORT = 1024  # another port is chosen above the well-known ones
MAX_PORT = 65535
PORT_TRIES = 8  # random ports tried after the peer's own; all taken: refused
COMPACT_SLACK = 1024  # stale heap deadlines tolerated beyond twice the live entries

TCP_FIN = 0x01
TCP_RST = 0x04


def _is_icmp(protocol: int) -> bool:
    return protocol in (IPPROTO_ICMP, IPPROTO_ICMPV6)


class Refused(StrEnum):
    """Why `NatTable.outbound` made no entry (the handler's counter names)."""

    TABLE_FULL = "nat_table_full"  # every entry answered: nothing to evict
    PEER_QUOTA = "nat_peer_quota"  # the peer's entries all answered, at its quota
    NO_PORT = "nat_no_port"  # PORT_TRIES random ports all taken


@dataclass(frozen=True, slots=True)
class Inside:
    """The flow as the peer sees it."""

    peer: Hashable
    protocol: int  # IPPROTO_TCP, IPPROTO_UDP, or ICMP/ICMPv6 for echo
    source: IPAddress
    source_port: int  # or the echo identifier
    proxy: IPAddress
    destination_port: int  # 0 for ICMP
    _hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        fields = (self.peer, self.protocol, self.source, self.source_port, self.proxy)
        object.__setattr__(self, "_hash", hash((*fields, self.destination_port)))

    def __hash__(self) -> int:  # a key of several dicts: hashed once, not at every lookup
        return self._hash


@dataclass(frozen=True, slots=True)
class Outside:
    """The flow as the real host sees it (the key replies are matched by)."""

    protocol: int  # in the outside family (ICMP for an ICMPv6 echo translated to IPv4)
    real: IPAddress
    real_port: int  # 0 for ICMP
    source: IPAddress
    source_port: int  # or the echo identifier
    _hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        fields = (self.protocol, self.real, self.real_port, self.source)
        object.__setattr__(self, "_hash", hash((*fields, self.source_port)))

    def __hash__(self) -> int:  # as Inside's
        return self._hash


@dataclass(slots=True)
class Entry:
    inside: Inside
    outside: Outside
    expires: float
    confirmed: bool = False
    fin_out: bool = False  # a FIN went from the peer toward the real host
    fin_in: bool = False
    generation: int = field(default=0, repr=False)  # of its newest deadline in the heap
    scheduled: float = field(default=float("inf"), repr=False)  # that deadline


class NatTable:
    def __init__(
        self,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        peer_quota: int | None = None,
        *,
        rng: random.Random | None = None,
    ) -> None:
        self.max_entries = max_entries
        self.peer_quota = min(max_entries, peer_quota or DEFAULT_PEER_QUOTA)
        self._rng = rng if rng is not None else random.Random()  # noqa: S311 - ports, not keys
        self.evicted = 0  # unanswered entries removed to make room
        self._by_inside: dict[Inside, Entry] = {}
        self._per_peer: Counter[Hashable] = Counter()
        # Unanswered entries, oldest first: all, and per peer. OrderedDict: taking the oldest
        # is O(1) (a dict's first item after many deletions at its front is a scan).
        self._unanswered: OrderedDict[Inside, Entry] = OrderedDict()
        self._unanswered_of: dict[Hashable, OrderedDict[Inside, Entry]] = {}
        self._by_outside: dict[Outside, Entry] = {}
        self._deadlines: list[tuple[float, int, Outside]] = []
        self._generation = 0
        # Entries per real address (packed): a reply's source is looked up here first, so a
        # packet of no translated flow costs one set lookup, not a key of address objects.
        self._reals: Counter[bytes] = Counter()

    def __len__(self) -> int:
        return len(self._by_inside)

    def outbound(  # noqa: PLR0913 - the two ends of the flow, as the caller parsed them
        self,
        inside: Inside,
        real: IPAddress,
        *,
        outside_protocol: int,
        outside_source: IPAddress,
        now: float,
        tcp_flags: int = 0,
    ) -> Entry | Refused:
        """The entry for a packet from the peer, made if new (evicting an unanswered one
        when the peer or the table is full); why not when no entry could be made."""
        entry = self._by_inside.get(inside)
        if entry is None or entry.outside.real != real:
            if entry is not None:  # the name now resolves elsewhere: start over
                self._remove(entry)
            made = self._create(inside, real, outside_protocol, outside_source, now)
            if isinstance(made, Refused):
                return made
            entry = made
        if tcp_flags & TCP_RST:
            self._remove(entry)
            return entry
        if tcp_flags & TCP_FIN:
            entry.fin_out = True
        self._refresh(entry, now)
        return entry

    def inbound(self, outside: Outside, now: float, tcp_flags: int = 0) -> Entry | None:
        """The entry a reply from the real host belongs to, or None."""
        entry = self._by_outside.get(outside)
        if entry is None:
            return None
        if not entry.confirmed:
            entry.confirmed = True
            self._forget_unanswered(entry)
        if tcp_flags & TCP_RST:
            self._remove(entry)
            return entry
        if tcp_flags & TCP_FIN:
            entry.fin_in = True
        self._refresh(entry, now)
        return entry

    def _create(
        self,
        inside: Inside,
        real: IPAddress,
        protocol: int,
        source: IPAddress,
        now: float,
    ) -> Entry | Refused:
        room = self._make_room(inside.peer)
        if room is not None:
            return room
        real_port = 0 if _is_icmp(protocol) else inside.destination_port
        outside = Outside(protocol, real, real_port, source, inside.source_port)
        if outside in self._by_outside:
            for _ in range(PORT_TRIES):
                port = self._rng.randint(FIRST_RANDOM_PORT, MAX_PORT)
                outside = Outside(protocol, real, real_port, source, port)
                if outside not in self._by_outside:
                    break
            else:
                return Refused.NO_PORT
        entry = Entry(inside, outside, expires=now + UNCONFIRMED_TTL)
        self._by_inside[inside] = entry
        self._by_outside[outside] = entry
        self._reals[real.packed] += 1
        self._per_peer[inside.peer] += 1
        self._unanswered[inside] = entry
        own = self._unanswered_of.get(inside.peer)
        if own is None:
            own = self._unanswered_of[inside.peer] = OrderedDict()
        own[inside] = entry
        return entry

    def _make_room(self, peer: Hashable) -> Refused | None:
        """Room for one more entry of `peer`: its own oldest unanswered entry goes when it is
        at its quota, the oldest unanswered one of all when the table is full."""
        if self._per_peer[peer] >= self.peer_quota:
            own = self._unanswered_of.get(peer)
            if not own:
                return Refused.PEER_QUOTA
            self._evict(next(iter(own.values())))
        if len(self._by_inside) >= self.max_entries:
            if not self._unanswered:
                return Refused.TABLE_FULL
            self._evict(next(iter(self._unanswered.values())))
        return None

    def _evict(self, entry: Entry) -> None:
        self._remove(entry)
        self.evicted += 1

    def _forget_unanswered(self, entry: Entry) -> None:
        inside = entry.inside
        if self._unanswered.pop(inside, None) is None:
            return
        own = self._unanswered_of[inside.peer]
        del own[inside]
        if not own:
            del self._unanswered_of[inside.peer]

    def _ttl(self, entry: Entry) -> float:
        if entry.fin_in and entry.fin_out:
            return FIN_TTL
        if not entry.confirmed:
            return UNCONFIRMED_TTL
        if entry.inside.protocol == IPPROTO_TCP:
            return TCP_TTL
        return ICMP_TTL if _is_icmp(entry.inside.protocol) else UDP_TTL

    def _refresh(self, entry: Entry, now: float) -> None:
        entry.expires = now + self._ttl(entry)
        if entry.expires < entry.scheduled:  # due before the heap would look at it
            self._schedule(entry)

    def _schedule(self, entry: Entry) -> None:
        self._generation += 1
        entry.generation = self._generation
        entry.scheduled = entry.expires
        heapq.heappush(self._deadlines, (entry.expires, self._generation, entry.outside))
        if len(self._deadlines) > 2 * len(self._by_outside) + COMPACT_SLACK:
            live = self._by_outside
            self._deadlines = [
                item
                for item in self._deadlines
                if (e := live.get(item[2])) is not None and e.generation == item[1]
            ]
            heapq.heapify(self._deadlines)

    def entries(self) -> list[Entry]:
        """Every entry (gateway/ha replicates them to a standby)."""
        return list(self._by_inside.values())

    def restore(self, inside: Inside, outside: Outside, expires: float, confirmed: bool) -> bool:
        """An entry another gateway made (gateway/ha, a takeover), kept as it was: the same
        outside port, so the real host's flow goes on. False when its inside or outside key
        is taken here or the peer or the table has no room."""
        if inside in self._by_inside or outside in self._by_outside:
            return False
        if self._make_room(inside.peer) is not None:
            return False
        entry = Entry(inside, outside, expires=expires, confirmed=confirmed)
        self._by_inside[inside] = entry
        self._by_outside[outside] = entry
        self._reals[outside.real.packed] += 1
        self._per_peer[inside.peer] += 1
        if not confirmed:
            self._unanswered[inside] = entry
            self._unanswered_of.setdefault(inside.peer, OrderedDict())[inside] = entry
        self._schedule(entry)
        return True

    def find(self, outside: Outside) -> Entry | None:
        """The entry of `outside` without touching its lifetime (for ICMP errors about it)."""
        return self._by_outside.get(outside)

    def _remove(self, entry: Entry) -> None:
        if self._by_inside.get(entry.inside) is entry:
            del self._by_inside[entry.inside]
            peer = entry.inside.peer
            self._per_peer[peer] -= 1
            if not self._per_peer[peer]:
                del self._per_peer[peer]
            if not entry.confirmed:
                self._forget_unanswered(entry)
        if self._by_outside.pop(entry.outside, None) is not None:
            real = entry.outside.real.packed
            self._reals[real] -= 1
            if not self._reals[real]:
                del self._reals[real]

    def entries_of(self, peer: Hashable) -> int:
        return self._per_peer[peer]

    def has_real(self, address: bytes) -> bool:
        """Some entry translates toward this real address (4 or 16 raw bytes)."""
        return address in self._reals

    def next_deadline(self) -> float | None:
        return self._deadlines[0][0] if self._deadlines else None

    def expire(self, now: float) -> int:
        """Remove every entry that is due; returns how many."""
        removed = 0
        while self._deadlines and self._deadlines[0][0] <= now:
            _, generation, outside = heapq.heappop(self._deadlines)
            entry = self._by_outside.get(outside)
            if entry is None or entry.generation != generation:
                continue
            if entry.expires > now:  # used since it was scheduled: look again then
                self._schedule(entry)
            else:
                self._remove(entry)
                removed += 1
        return removed
