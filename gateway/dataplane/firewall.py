"""What the crypto process does with each inner packet besides encrypting it: the Firewall.

The interface shared by the policy and the DNS/NAT work (docs/ARCHITECTURE.md). The crypto
loop calls `Firewall.from_peer` for every decrypted packet (after the core's allowed-IPs
check) and `Firewall.to_peer` for every packet from the TUN before encrypting it; packets the
firewall made itself (ICMP errors for peers) come out of `take_replies`. A `ProxyHandler`
(gateway/nat/handler.py) plugs in for DNS resources: its decision is final for packets to
proxy addresses and for the replies of the flows it translated.

This branch's `Firewall` only hands packets to the proxy handler (no resource policy yet):
the policy-dp branch replaces the class with the full one, under the same names.
"""

from __future__ import annotations

import enum
from typing import Final, Protocol

from ippacket import IpPacket, PacketError

MAX_REPLIES = 1000  # queued between two loop turns; beyond that they are dropped and counted


class NotMine(enum.Enum):
    """`ProxyHandler.to_peer`: the packet is not a translated flow's."""

    NOT_MINE = "not mine"


NOT_MINE: Final = NotMine.NOT_MINE


class ProxyHandler(Protocol):
    def is_proxy(self, destination: bytes) -> bool:
        """The destination (4 or 16 raw bytes) is a proxy address."""
        ...

    def from_peer(self, peer_key: bytes, packet: IpPacket, now: float) -> bytearray | None:
        """A packet to a proxy address: the translated packet to forward, or None (an ICMP
        error was queued through the handler's `reply` callable, or it was dropped and
        counted)."""
        ...

    def to_peer(self, packet: IpPacket, now: float) -> bytearray | NotMine | None:
        """A packet from the TUN: the reverse-translated packet, None to drop, or NOT_MINE."""
        ...


class Firewall:
    """The proxy-handler part of the Firewall (the policy part comes with policy-dp)."""

    def __init__(self) -> None:
        self._proxy: ProxyHandler | None = None
        self._replies: list[bytearray] = []
        self.malformed = 0  # packets neither the proxy handler nor the policy could parse
        self.replies_dropped = 0

    def set_proxy_handler(self, handler: ProxyHandler | None) -> None:
        self._proxy = handler

    def reply(self, packet: bytearray) -> None:
        """For the proxy handler: queue a packet (an ICMP error) for a peer."""
        if len(self._replies) >= MAX_REPLIES:
            self.replies_dropped += 1
            return
        self._replies.append(packet)

    def take_replies(self) -> list[bytearray]:
        replies, self._replies = self._replies, []
        return replies

    def from_peer(self, peer_key: bytes, packet: bytearray, now: float) -> bytearray | None:
        proxy = self._proxy
        if proxy is None:
            return packet
        destination = packet[16:20] if packet[0] >> 4 == 4 else packet[24:40]  # noqa: PLR2004 - IP version
        if not proxy.is_proxy(bytes(destination)):
            return packet
        try:
            parsed = IpPacket(packet)
        except PacketError:
            self.malformed += 1
            return None
        return proxy.from_peer(peer_key, parsed, now)

    def to_peer(self, packet: memoryview, now: float) -> bytes | bytearray | memoryview | None:
        proxy = self._proxy
        if proxy is None:
            return packet
        try:
            parsed = IpPacket(packet)
        except PacketError:
            return packet  # not a flow of ours; the core drops what it cannot route
        result = proxy.to_peer(parsed, now)
        return packet if result is NOT_MINE else result
