"""Flows each peer sent lately: what an ICMP error toward the peer may quote.

Any host behind the gateway can send a peer an ICMP error with a quote that claims to be the
peer's packet; the source of the quote proves nothing. So the return path passes an error
only when the quoted packet is of a flow this peer sent recently: the firewall records every
flow it allows from a peer (`add`) and looks the quote up (`has`).

The key is the protocol and the raw addresses, plus the TCP/UDP ports or the echo identifier:
the same bytes whether read from the peer's packet (`flow_of`) or from the quote inside an
error (`quoted_flow`), which is at least the IP header and 8 bytes of transport (RFC 792). A
quote with IPv6 extension headers never matches (the peer's packet is keyed after them).

Bounded fairly: at most `per_peer` flows per peer, least recently seen dropped first, so one
peer's many flows never push out another's; at most `max_peers` peers (beyond that the
record starts over).
"""

from __future__ import annotations

from collections.abc import Hashable

from ippacket import IpPacket

_IPV4, _IPV6 = 4, 6
_ICMP, _TCP, _UDP, _ICMPV6 = 1, 6, 17, 58
_ECHO_REQUESTS = frozenset({(_ICMP, 8), (_ICMPV6, 128)})  # protocols differ by family
_IPV4_HEADER, _IPV6_HEADER = 20, 40
_PORTS = 4  # source and destination port
_ECHO_ID_END = 6  # type, code, checksum, identifier
DEFAULT_PER_PEER = 1024
DEFAULT_MAX_PEERS = 65536

FlowId = tuple[int, bytes]  # (protocol, addresses + ports or echo identifier)


def flow_of(packet: IpPacket) -> FlowId:
    """The flow a parsed packet from a peer belongs to (on the firewall's per-packet path
    while DNS resources exist: one slice where the ports follow the addresses)."""
    end = 20 if packet.version == _IPV4 else 40
    return packet.protocol, _key(packet.data, end, packet.l4_offset, packet.protocol)


def quoted_flow(quote: memoryview | bytes) -> FlowId | None:
    """The flow of the packet an ICMP error quotes (from the quoted IP header on), or None
    when the quote is too short for its IP header."""
    quote = memoryview(quote)
    if len(quote) < _IPV4_HEADER:
        return None
    version = quote[0] >> 4
    if version == _IPV4:
        header = (quote[0] & 0x0F) * 4
        protocol, end = quote[9], 20
        first = not (quote[6] & 0x1F or quote[7])  # a non-first fragment has no ports
        l4 = header if first and header >= _IPV4_HEADER else None
    elif version == _IPV6 and len(quote) >= _IPV6_HEADER:
        protocol, end, l4 = quote[6], 40, _IPV6_HEADER
    else:
        return None
    return protocol, _key(quote, end, l4, protocol)


def _key(data: memoryview, end: int, l4: int | None, protocol: int) -> bytes:
    """The addresses (they end at `end`), then the ports of a TCP/UDP packet or the
    identifier of an echo request, else nothing."""
    start = end - 8 if end == _IPV4_HEADER else 8
    if l4 is None:
        return data[start:end].tobytes()
    if protocol in (_TCP, _UDP):
        if l4 == end:  # the ports follow the addresses
            return data[start : end + _PORTS].tobytes()
        return data[start:end].tobytes() + data[l4 : l4 + _PORTS].tobytes()
    if len(data) >= l4 + _ECHO_ID_END and (protocol, data[l4]) in _ECHO_REQUESTS:
        return data[start:end].tobytes() + data[l4 + 4 : l4 + _ECHO_ID_END].tobytes()
    return data[start:end].tobytes()


class RecentFlows:
    def __init__(self, per_peer: int = DEFAULT_PER_PEER, max_peers: int = DEFAULT_MAX_PEERS):
        self.per_peer = per_peer
        self.max_peers = max_peers
        self._by_peer: dict[Hashable, dict[FlowId, None]] = {}

    def add(self, peer: Hashable, flow: FlowId) -> None:
        flows = self._by_peer.get(peer)
        if flows is None:
            if len(self._by_peer) >= self.max_peers:
                self._by_peer.clear()
            flows = self._by_peer[peer] = {}
        elif flows.pop(flow, 0) is None:  # seen before: now the most recent
            pass
        elif len(flows) >= self.per_peer:
            del flows[next(iter(flows))]
        flows[flow] = None

    def has(self, peer: Hashable, flow: FlowId) -> bool:
        flows = self._by_peer.get(peer)
        return flows is not None and flow in flows

    def clear(self) -> None:
        self._by_peer.clear()
