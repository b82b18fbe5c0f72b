"""The ProxyHandler: packets to DNS resources' proxy addresses, translated to the real ones.

Lives in the crypto process (the `Firewall` calls it, gateway/dataplane/firewall.py). Owns
the proxy mappings the DNS process sent (`apply`: proxy address -> resource and real
addresses) and the NAT table. Sans-I/O: packets and `now` in, packets out; ICMP errors
for peers go out through the `reply` callable given at construction.

A peer's packet to a proxy address is forwarded only when the peer is granted the
mapping's resource and the resource's filters admit the protocol and port (else ICMP
administratively prohibited); it goes to the first real address of the proxy's family,
from the peer's own address and port (another port when that one is taken toward the real
address). A name with no address of that family: the packet is translated to the other
family (RFC 7915, gateway/nat/translate.py: NAT64 for an IPv6 proxy, NAT46 for an IPv4 one),
from the peer's own tunnel address of that family (`PeerSources`, from its allowed IPs);
no such address, or a packet RFC 7915 cannot translate: ICMP destination unreachable
(silence where the RFC says so), never a silent drop otherwise. Replies from the real host
match the NAT table's outside key and are rewritten (translated) back to come from the proxy
address; ICMP errors about a translated flow are rewritten too, outer and quoted packet.
Fragments cannot be matched to a flow (only the first carries ports): dropped and counted.
Every drop has a reason in `counters`. Expiry: `next_deadline`/`expire(now)`, driven by
the crypto loop's timers.
"""

from __future__ import annotations

import ipaddress
import struct
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

from gateway.dns.proxy import DEFAULT_CAPACITY
from gateway.ipnet import IPNetwork
from gateway.nat.stage import NOT_MINE, NotMine
from gateway.nat.table import TCP_RST, Entry, Inside, NatTable, Outside, Refused
from gateway.nat.translate import Untranslatable, ipv4_to_ipv6, ipv6_to_ipv4
from gateway.policy.icmp_limit import IcmpErrorLimiter
from gateway.resources.filters import FilterSet
from gateway.resources.proxy_ranges import IPV4_RANGE, IPV6_RANGE
from gateway.resources.resource import Resource
from ippacket import ImpossiblePacket, IpPacket, MalformedPacket, checksum
from ippacket.headers import ICMP, ICMPV6, IPV4, IPV6, TCP, UDP
from ippacket.icmp_errors import Unreachable, destination_unreachable

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_ECHO_REQUESTS = frozenset({(IPV4, 8), (IPV6, 128)})
_ECHO_REPLIES = frozenset({(IPV4, 0), (IPV6, 129)})
_V4_PROXY_MASK = int(IPV4_RANGE.netmask)
_V4_PROXY_NET = int(IPV4_RANGE.network_address)
_V6_PROXY_MASK = int(IPV6_RANGE.netmask)
_V6_PROXY_NET = int(IPV6_RANGE.network_address)
_U16 = struct.Struct("!H")
_ICMP_HEADER = 8
_IPV6_HEADER = 40
_IPV4_HEADER = 20
_PORTS = 4  # bytes of a quoted TCP/UDP header the handler needs: the two ports
_QUOTED_ECHO = 6  # bytes of a quoted echo up to its identifier
# Packets answered with ICMP unreachable or prohibited (the rest of the counters are drops).
_REFUSALS = frozenset(
    {
        "no_mapping",
        "not_granted",
        "protocol",
        "filtered",
        "no_address_of_family",
        *Refused,
        "untranslatable",
    }
)
_QUOTED_CHECKSUM = {TCP: 16, UDP: 6, ICMP: 2, ICMPV6: 2}
MAX_REAL_ADDRESSES = 16  # per family and mapping; more would only be ignored
MAX_TARGETS = 2 * DEFAULT_CAPACITY  # proxy addresses mapped: a v4 and a v6 one per name


@dataclass(frozen=True, slots=True)
class Target:
    """What one proxy address stands for: a resource and the name's real addresses."""

    resource: int
    real_v4: tuple[ipaddress.IPv4Address, ...]
    real_v6: tuple[ipaddress.IPv6Address, ...]


def grants_by_key(
    resources: Sequence[Resource], peers: Iterable[tuple[bytes, Sequence[str]]]
) -> dict[bytes, frozenset[int]]:
    """Peer public key -> indexes of the resources it is granted (by name)."""
    index = {resource.name: i for i, resource in enumerate(resources)}
    return {key: frozenset(index[name] for name in names if name in index) for key, names in peers}


class ProxyHandler:
    def __init__(
        self,
        resources: Sequence[Resource],
        grants: Mapping[bytes, frozenset[int]],
        reply: Callable[[bytearray], None],
        *,
        sources: Mapping[bytes, PeerSources] | None = None,
        table: NatTable | None = None,
    ) -> None:
        self._filters = [FilterSet(r.filters) for r in resources]
        self._names = [r.name for r in resources]
        self._grants = dict(grants)
        self._sources = dict(sources or {})
        self._reply = reply
        self._icmp_limit = IcmpErrorLimiter()  # per peer, as the kernel's icmp_ratelimit
        self.table = table if table is not None else NatTable()
        self._targets: dict[IpAddress, Target] = {}
        self.counters: Counter[str] = Counter()

    # ---- configuration --------------------------------------------------------------------

    def apply(self, proxy_v4: IpAddress, proxy_v6: IpAddress, target: Target) -> None:
        """A mapping from the DNS process. It hands out at most DEFAULT_CAPACITY pairs and
        reuses them, so MAX_TARGETS is never reached unless something is wrong: counted."""
        if target.resource >= len(self._filters):  # the DNS process read another config
            self.counters["mapping_unknown_resource"] += 1
            return
        for proxy in (proxy_v4, proxy_v6):
            if not self.is_proxy(proxy.packed):
                self.counters["mapping_outside_proxy_range"] += 1
            elif proxy not in self._targets and len(self._targets) >= MAX_TARGETS:
                self.counters["mapping_table_full"] += 1
            else:
                self._targets[proxy] = target

    def set_grants(
        self,
        resources: Sequence[Resource],
        grants: Mapping[bytes, frozenset[int]],
        sources: Mapping[bytes, PeerSources] | None = None,
    ) -> None:
        """After a reload: existing flows keep running; new packets see the new grants and
        filters. Mappings follow their resource by name to its new index; those of a
        resource that is gone are dropped (its names' packets get ICMP unreachable)."""
        index = {r.name: i for i, r in enumerate(resources)}
        moved = [index.get(name) for name in self._names]
        for proxy, target in list(self._targets.items()):
            new = moved[target.resource]
            if new is None:
                del self._targets[proxy]
            elif new != target.resource:
                self._targets[proxy] = Target(new, target.real_v4, target.real_v6)
        self._filters = [FilterSet(r.filters) for r in resources]
        self._names = [r.name for r in resources]
        self._grants = dict(grants)
        self._sources = dict(sources or {})

    # ---- the ProxyHandler protocol ------------------------------------------------------

    @staticmethod
    def is_proxy(destination: bytes) -> bool:
        if len(destination) == 4:  # noqa: PLR2004 - IPv4 address bytes
            return int.from_bytes(destination) & _V4_PROXY_MASK == _V4_PROXY_NET
        return int.from_bytes(destination) & _V6_PROXY_MASK == _V6_PROXY_NET

    def from_peer(self, peer_key: bytes, packet: IpPacket, now: float) -> bytearray | None:
        proxy = packet.destination
        target = self._targets.get(proxy)
        if target is None:
            self._refuse(packet, Unreachable.ADDRESS, "no_mapping", peer_key, now)
            return None
        flow = self._admitted(peer_key, packet, target, now)
        if flow is None:
            return None
        source_port, port, flags = flow
        same_family: tuple[IpAddress, ...] = (
            target.real_v4 if packet.version == IPV4 else target.real_v6
        )
        source = packet.source
        if same_family:
            real, outside_source, protocol = same_family[0], source, packet.protocol
        else:  # NAT64 / NAT46 (RFC 7915), from the peer's own address of the other family
            other = _other_family(packet, target, self._sources.get(peer_key))
            if other is None:
                self._refuse(packet, Unreachable.ADDRESS, "no_address_of_family", peer_key, now)
                return None
            real, outside_source, protocol = other
        entry = self.table.outbound(
            Inside(peer_key, packet.protocol, source, source_port, proxy, port),
            real,
            outside_protocol=protocol,
            outside_source=outside_source,
            now=now,
            tcp_flags=flags,
        )
        if isinstance(entry, Refused):
            self._refuse(packet, Unreachable.ADDRESS, entry.value, peer_key, now)
            return None
        if same_family:
            out = bytearray(packet.data)
            rewritten = IpPacket(out)
            rewritten.set_destination(entry.outside.real)
        else:
            translated = self._translate(
                packet, entry.outside.source, entry.outside.real, answer_to=peer_key, now=now
            )
            if translated is None:
                return None
            out = translated
            rewritten = IpPacket(out)
        if entry.outside.source_port != source_port:
            _set_flow_port(rewritten, source=True, port=entry.outside.source_port)
        self.counters["translated_out"] += 1
        return out

    def _translate(  # noqa: PLR0913 - the addresses, then keyword-only who to answer and when
        self,
        packet: IpPacket,
        source: IpAddress,
        destination: IpAddress,
        quoted: tuple[IpAddress, IpAddress] | None = None,
        *,
        answer_to: bytes | None = None,
        now: float = 0.0,
    ) -> bytearray | None:
        """`packet` in the other family (RFC 7915), from `source` to `destination`; None
        after counting and, for a peer's packet (`answer_to`), answering with ICMP
        unreachable unless RFC 7915 says to drop silently."""
        try:
            if isinstance(source, IPv4Address):
                return ipv6_to_ipv4(packet, source, _v4(destination), quoted=_v4_pair(quoted))
            return ipv4_to_ipv6(packet, source, _v6(destination), quoted=_v6_pair(quoted))
        except Untranslatable as exc:
            self.counters[f"untranslatable_{exc.reason}"] += 1
            if answer_to is not None and not exc.silent:
                self._refuse(packet, Unreachable.ADDRESS, "untranslatable", answer_to, now)
            return None

    def _admitted(
        self, peer_key: bytes, packet: IpPacket, target: Target, now: float
    ) -> tuple[int, int, int] | None:
        """The flow (see `_flow`) when the peer may send it to the resource; else None
        after answering or counting."""
        if target.resource not in self._grants.get(peer_key, ()):
            self._refuse(packet, Unreachable.PROHIBITED, "not_granted", peer_key, now)
            return None
        if packet.is_fragment:
            self.counters["fragment"] += 1
            return None
        flow = _flow(packet, _ECHO_REQUESTS)
        if flow is None:
            self._refuse(packet, Unreachable.PROHIBITED, "protocol", peer_key, now)
            return None
        if not self._filters[target.resource].permits(packet.protocol, flow[1]):
            self._refuse(packet, Unreachable.PROHIBITED, "filtered", peer_key, now)
            return None
        return flow

    def to_peer(self, packet: IpPacket, now: float) -> bytearray | NotMine | None:
        table = self.table
        if not len(table) or packet.is_fragment:
            return NOT_MINE
        if packet.is_icmp_error:
            return self._error_to_peer(packet)
        data = packet.data
        if not table.has_real(bytes(data[12:16] if packet.version == IPV4 else data[8:24])):
            return NOT_MINE
        flow = _flow(packet, _ECHO_REPLIES)
        if flow is None:
            return NOT_MINE
        real_port, port, flags = flow
        if packet.protocol not in (TCP, UDP):  # an echo reply: (0, identifier)
            real_port, port = 0, real_port
        outside = Outside(packet.protocol, packet.source, real_port, packet.destination, port)
        entry = table.inbound(outside, now, flags)
        if entry is None:
            return NOT_MINE
        return self._reply_to_peer(packet, entry, port, flags)

    def _reply_to_peer(
        self, packet: IpPacket, entry: Entry, port: int, flags: int
    ) -> bytearray | None:
        """A reply of a translated flow, as coming from the proxy address."""
        inside = entry.inside
        if inside.proxy.version == packet.version:
            out = bytearray(packet.data)
            rewritten = IpPacket(out)
            rewritten.set_source(inside.proxy)
            if inside.source != entry.outside.source:
                rewritten.set_destination(inside.source)
        else:
            translated = self._translate(packet, inside.proxy, inside.source)
            if translated is None:
                return None
            out = translated
            rewritten = IpPacket(out)
        if entry.inside.source_port != port:
            _set_flow_port(rewritten, source=False, port=entry.inside.source_port)
        if flags & TCP_RST:
            self.counters["closed_by_rst"] += 1
        self.counters["translated_in"] += 1
        return out

    def summary(self) -> dict[str, int]:
        """The counters as /metrics shows them (stats.NAT_COUNTER_NAMES)."""
        c = self.counters
        refused = sum(c[name] for name in _REFUSALS)
        moved = {"translated_out", "translated_in", "expired", "icmp_errors_translated"}
        dropped = sum(v for k, v in c.items() if k not in moved and k not in _REFUSALS)
        return {
            "translated_out": c["translated_out"],
            "translated_in": c["translated_in"],
            "icmp_errors_translated": c["icmp_errors_translated"],
            "refused": refused,
            "dropped": dropped - c["closed_by_rst"],
            "expired": c["expired"],
            "entries": len(self.table),
            "evicted": self.table.evicted,
            "refused_no_room": sum(c[reason] for reason in Refused),
        }

    # ---- timers ---------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        return self.table.next_deadline()

    def expire(self, now: float) -> None:
        self.counters["expired"] += self.table.expire(now)

    def _error_across_families(
        self, out: bytearray, transport: int, entry: Entry
    ) -> bytearray | NotMine:
        """An ICMP error about a NAT64/46 flow: the quote's port as the peer sent it, then
        RFC 7915 translates the whole error (quoted addresses given, the proxy as source)."""
        inside = entry.inside
        port_at = transport if inside.protocol in (TCP, UDP) else transport + 4
        _U16.pack_into(out, port_at, inside.source_port)
        try:
            error = IpPacket(out)
            error.recompute_checksums()
        except MalformedPacket:
            return NOT_MINE
        translated = self._translate(
            error, inside.proxy, inside.source, quoted=(inside.source, inside.proxy)
        )
        if translated is None:
            return NOT_MINE
        self.counters["icmp_errors_translated"] += 1
        return translated

    # ---- helpers --------------------------------------------------------------------------

    def _refuse(
        self, packet: IpPacket, reason: Unreachable, counter: str, peer_key: bytes, now: float
    ) -> None:
        """Count, and answer the peer with ICMP unreachable within its rate limit."""
        self.counters[counter] += 1
        if not self._icmp_limit.allow(peer_key, now):
            self.counters["icmp_rate_limited"] += 1
            return
        try:
            error = destination_unreachable(packet, reason)
        except ImpossiblePacket:
            return None  # never an error about an error (or to a multicast source)
        self._reply(bytearray(error.data))
        return None

    def _error_to_peer(self, packet: IpPacket) -> bytearray | NotMine:
        """An ICMP error from the network quoting a translated packet: back to the peer,
        its quote rewritten as the peer sent it (proxy destination, the peer's port)."""
        l4 = packet.l4_offset
        if l4 is None:
            return NOT_MINE
        out = bytearray(packet.data)
        quote = l4 + _ICMP_HEADER
        found = _quoted_flow(out, quote, packet.version)
        if found is None:
            return NOT_MINE
        outside, transport = found
        entry = self.table.find(outside)
        if entry is None:
            return NOT_MINE
        inside = entry.inside
        if inside.proxy.version != packet.version:
            return self._error_across_families(out, transport, entry)
        _rewrite_quote(out, quote, transport, packet.version, entry)
        # The outer packet: to the peer; from the proxy when the real host itself sent it.
        outer_destination = 16 if packet.version == IPV4 else 24
        outer_source = 12 if packet.version == IPV4 else 8
        size = len(entry.inside.source.packed)
        out[outer_destination : outer_destination + size] = entry.inside.source.packed
        if out[outer_source : outer_source + size] == entry.outside.real.packed:
            out[outer_source : outer_source + size] = entry.inside.proxy.packed
        try:
            IpPacket(out).recompute_checksums()  # rare: a full sum is simpler than five updates
        except MalformedPacket:
            return NOT_MINE
        self.counters["icmp_errors_translated"] += 1
        return out


@dataclass(frozen=True, slots=True)
class PeerSources:
    """A peer's own tunnel addresses: the source of its packets translated to that family."""

    v4: IPv4Address | None
    v6: IPv6Address | None


def sources_by_key(peers: Iterable[tuple[bytes, Sequence[IPNetwork]]]) -> dict[bytes, PeerSources]:
    """Peer public key -> its first host address of each family among its allowed IPs."""
    found = {}
    for key, networks in peers:
        hosts = [n.network_address for n in networks if n.prefixlen == n.max_prefixlen]
        found[key] = PeerSources(
            next((a for a in hosts if isinstance(a, IPv4Address)), None),
            next((a for a in hosts if isinstance(a, IPv6Address)), None),
        )
    return found


def _other_family(
    packet: IpPacket, target: Target, sources: PeerSources | None
) -> tuple[IpAddress, IpAddress, int] | None:
    """(real address, outside source, outside protocol) in the other family, or None."""
    if packet.version == IPV6:
        reals: tuple[IpAddress, ...] = target.real_v4
        source: IpAddress | None = None if sources is None else sources.v4
        protocol = ICMP if packet.protocol == ICMPV6 else packet.protocol
    else:
        reals = target.real_v6
        source = None if sources is None else sources.v6
        protocol = ICMPV6 if packet.protocol == ICMP else packet.protocol
    if not reals or source is None:
        return None
    return reals[0], source, protocol


def _v4(address: IpAddress) -> IPv4Address:
    if not isinstance(address, IPv4Address):  # a NAT entry has one family per side
        raise TypeError(f"{address} is not IPv4")
    return address


def _v6(address: IpAddress) -> IPv6Address:
    if not isinstance(address, IPv6Address):  # a NAT entry has one family per side
        raise TypeError(f"{address} is not IPv6")
    return address


def _v4_pair(pair: tuple[IpAddress, IpAddress] | None) -> tuple[IPv4Address, IPv4Address] | None:
    return None if pair is None else (_v4(pair[0]), _v4(pair[1]))


def _v6_pair(pair: tuple[IpAddress, IpAddress] | None) -> tuple[IPv6Address, IPv6Address] | None:
    return None if pair is None else (_v6(pair[0]), _v6(pair[1]))


def _flow(packet: IpPacket, echoes: frozenset[tuple[int, int]]) -> tuple[int, int, int] | None:
    """(source port, destination port, TCP flags) of a TCP/UDP packet, (echo id, 0, 0) of an
    echo of the given kinds; None for anything else."""
    protocol = packet.protocol
    if protocol in (TCP, UDP):
        source_port, port = packet.source_port, packet.destination_port
        if source_port is None or port is None:
            return None
        tcp = packet.tcp if protocol == TCP else None
        return source_port, port, 0 if tcp is None else tcp.flags
    if (packet.version, packet.icmp_type) in echoes:
        echo_id = packet.echo_id
        return None if echo_id is None else (echo_id, 0, 0)
    return None


def _set_flow_port(packet: IpPacket, *, source: bool, port: int) -> None:
    """The peer-side port: a TCP/UDP source or destination port, or the echo identifier."""
    if packet.protocol not in (TCP, UDP):
        packet.set_echo_id(port)
    elif source:
        packet.set_source_port(port)
    else:
        packet.set_destination_port(port)


def _quoted_flow(buf: bytearray, at: int, version: int) -> tuple[Outside, int] | None:
    """The outside key of the packet an ICMP error quotes (it went peer -> real host), and
    where its transport header starts; None when the quote is too short or of no flow."""
    if version == IPV4:
        if len(buf) < at + _IPV4_HEADER or buf[at] >> 4 != IPV4:
            return None
        transport = at + (buf[at] & 0x0F) * 4
        protocol = buf[at + 9]
        source: IpAddress = ipaddress.IPv4Address(bytes(buf[at + 12 : at + 16]))
        real: IpAddress = ipaddress.IPv4Address(bytes(buf[at + 16 : at + 20]))
    else:
        if len(buf) < at + _IPV6_HEADER or buf[at] >> 4 != IPV6:
            return None
        transport = at + _IPV6_HEADER  # extension headers in a quote: not a flow of ours
        protocol = buf[at + 6]
        source = ipaddress.IPv6Address(bytes(buf[at + 8 : at + 24]))
        real = ipaddress.IPv6Address(bytes(buf[at + 24 : at + 40]))
    if protocol in (TCP, UDP):
        if len(buf) < transport + _PORTS:
            return None
        port, real_port = struct.unpack_from("!HH", buf, transport)
    elif protocol in (ICMP, ICMPV6):
        if len(buf) < transport + _QUOTED_ECHO or (version, buf[transport]) not in _ECHO_REQUESTS:
            return None
        port, real_port = _U16.unpack_from(buf, transport + 4)[0], 0
    else:
        return None
    return Outside(protocol, real, real_port, source, port), transport


def _rewrite_quote(buf: bytearray, at: int, transport: int, version: int, entry: Entry) -> None:
    """The quoted packet as the peer sent it: addresses, port or echo id, and the quoted
    checksums (IPv4 header; the transport's when the quote holds it) updated to match."""
    inside, outside = entry.inside, entry.outside
    if version == IPV4:
        source, destination = at + 12, at + 16
    else:
        source, destination = at + 8, at + 24
    size = len(inside.source.packed)
    old = checksum.ones_sum(buf[source : destination + size])
    buf[source : source + size] = inside.source.packed
    buf[destination : destination + size] = inside.proxy.packed
    new = checksum.ones_sum(buf[source : destination + size])
    if version == IPV4:
        header = (buf[at] & 0x0F) * 4
        _U16.pack_into(buf, at + 10, 0)
        _U16.pack_into(buf, at + 10, checksum.internet_checksum(buf[at : at + header]))
    port_at = transport if inside.protocol in (TCP, UDP) else transport + 4
    _U16.pack_into(buf, port_at, inside.source_port)
    if inside.protocol == ICMP:  # ICMPv4 has no pseudo-header: only the identifier counts
        old = new = 0
    old += outside.source_port
    new += inside.source_port
    at_checksum = transport + _QUOTED_CHECKSUM[inside.protocol]
    if at_checksum + 2 <= len(buf):
        checksum.update_field(memoryview(buf), at_checksum, old, new, inside.protocol == UDP)
