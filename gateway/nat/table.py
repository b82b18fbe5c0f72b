"""The NAT table: which translated flow belongs to which peer, and for how long.

A peer sends to a proxy address (`inside`); the gateway sends the same flow to a real address
of the name (`outside`), from `outside_source` (the peer's own address of that family, or the
gateway's when the families differ) and, when that (address, port) pair is already taken
toward that real address, another port. Replies match the outside key and go back to the
peer as coming from the proxy address. Flows are TCP/UDP ports or ICMP echo identifiers.

Lifetimes (Firezone's, after RFC 5382 for TCP): an entry nothing has answered yet lives 60 s;
once answered, TCP lives 2 h 4 min after its last packet, UDP and ICMP 2 min; a FIN seen in
both directions leaves 5 s; an RST ends the entry at once. Bounded: at most `max_entries`;
a new flow beyond that is refused (the caller answers with ICMP unreachable and counts it).
No clock inside: every call takes `now`, and `expire(now)` removes what is due.

Deadlines: a packet only moves `Entry.expires`; the heap holds one deadline per entry (and
stale ones of removed entries, compacted when they outnumber the live ones), so the
per-packet cost is O(1). An entry whose heap deadline comes before its `expires` is pushed
again at that point; one whose lifetime shrinks (FIN seen both ways) is pushed at once.
"""

from __future__ import annotations

import heapq
import ipaddress
from collections import Counter
from collections.abc import Hashable
from dataclasses import dataclass, field

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
MAX_PORT = 65535
COMPACT_SLACK = 1024  # stale heap deadlines tolerated beyond twice the live entries

TCP_FIN = 0x01
TCP_RST = 0x04


def _is_icmp(protocol: int) -> bool:
    return protocol in (IPPROTO_ICMP, IPPROTO_ICMPV6)


@dataclass(frozen=True, slots=True)
class Inside:
    """The flow as the peer sees it."""

    peer: Hashable
    protocol: int  # IPPROTO_TCP, IPPROTO_UDP, or ICMP/ICMPv6 for echo
    source: IPAddress
    source_port: int  # or the echo identifier
    proxy: IPAddress
    destination_port: int  # 0 for ICMP


@dataclass(frozen=True, slots=True)
class Outside:
    """The flow as the real host sees it (the key replies are matched by)."""

    protocol: int  # in the outside family (ICMP for an ICMPv6 echo translated to IPv4)
    real: IPAddress
    real_port: int  # 0 for ICMP
    source: IPAddress
    source_port: int  # or the echo identifier


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
    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        self.max_entries = max_entries
        self._by_inside: dict[Inside, Entry] = {}
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
    ) -> Entry | None:
        """The entry for a packet from the peer, made if new; None when the table is full
        or no port toward `real` is free."""
        entry = self._by_inside.get(inside)
        if entry is None or entry.outside.real != real:
            if entry is not None:  # the name now resolves elsewhere: start over
                self._remove(entry)
            entry = self._create(inside, real, outside_protocol, outside_source, now)
            if entry is None:
                return None
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
        entry.confirmed = True
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
    ) -> Entry | None:
        if len(self._by_inside) >= self.max_entries:
            return None
        real_port = 0 if _is_icmp(protocol) else inside.destination_port
        port = inside.source_port
        for _ in range(MAX_PORT):
            outside = Outside(protocol, real, real_port, source, port)
            if outside not in self._by_outside:
                break
            port = port % MAX_PORT + 1  # the next port, wrapping past 65535 to 1
        else:
            return None
        entry = Entry(inside, outside, expires=now + UNCONFIRMED_TTL)
        self._by_inside[inside] = entry
        self._by_outside[outside] = entry
        self._reals[real.packed] += 1
        return entry

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

    def find(self, outside: Outside) -> Entry | None:
        """The entry of `outside` without touching its lifetime (for ICMP errors about it)."""
        return self._by_outside.get(outside)

    def _remove(self, entry: Entry) -> None:
        self._by_inside.pop(entry.inside, None)
        if self._by_outside.pop(entry.outside, None) is not None:
            real = entry.outside.real.packed
            self._reals[real] -= 1
            if not self._reals[real]:
                del self._reals[real]

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
