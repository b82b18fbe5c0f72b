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
_ECHO_REQUESTS = frozenset({(_ICMP, 8), (_ICMPV6, 128)})
_IPV4_HEADER, _IPV6_HEADER = 20, 40
_PORTS = 4  # source and destination port
_ECHO_ID_END = 6  # type, code, checksum, identifier
DEFAULT_PER_PEER = 1024
DEFAULT_MAX_PEERS = 65536

FlowId = tuple[int, bytes]  # (protocol, addresses + ports or echo identifier)


def flow_of(packet: IpPacket) -> FlowId:
    """The flow a parsed packet from a peer belongs to."""
    data = packet.data
    addresses = bytes(data[12:20] if packet.version == _IPV4 else data[8:40])
    return packet.protocol, addresses + _transport_id(
        data, packet.l4_offset, packet.protocol, packet.version
    )


def quoted_flow(quote: memoryview | bytes) -> FlowId | None:
    """The flow of the packet an ICMP error quotes (from the quoted IP header on), or None
    when the quote is too short for its IP header."""
    if len(quote) < _IPV4_HEADER:
        return None
    version = quote[0] >> 4
    if version == _IPV4:
        header = (quote[0] & 0x0F) * 4
        protocol = quote[9]
        addresses = bytes(quote[12:20])
        first = not (quote[6] & 0x1F or quote[7])  # a non-first fragment has no ports
        l4 = header if first and header >= _IPV4_HEADER else None
    elif version == _IPV6 and len(quote) >= _IPV6_HEADER:
        protocol = quote[6]
        addresses = bytes(quote[8:40])
        l4 = _IPV6_HEADER
    else:
        return None
    return protocol, addresses + _transport_id(quote, l4, protocol, version)


def _transport_id(data: memoryview | bytes, l4: int | None, protocol: int, version: int) -> bytes:
    """The ports of a TCP/UDP packet, the identifier of an echo request, else nothing."""
    if l4 is None:
        return b""
    if protocol in (_TCP, _UDP):
        return bytes(data[l4 : l4 + _PORTS])
    if len(data) >= l4 + _ECHO_ID_END:
        icmp = _ICMP if version == _IPV4 else _ICMPV6
        if protocol == icmp and (protocol, data[l4]) in _ECHO_REQUESTS:
            return bytes(data[l4 + 4 : l4 + _ECHO_ID_END])
    return b""


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
