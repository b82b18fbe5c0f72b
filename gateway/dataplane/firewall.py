"""The firewall stage of the crypto process: the policy (and DNS proxies) on every inner packet.

Owned by the crypto process, called by `CryptoLoop` only when resources or a proxy handler
exist (otherwise `CryptoLoop.firewall` is None and packets never reach this module):

* `from_peer`: a decrypted packet, after the core checked its source against the peer's
  allowed IPs; returns the packet for the TUN or None (dropped and counted).
* `to_peer`: a packet from the TUN before it is encrypted; returns it or None.
* `take_replies`: ICMP errors generated meanwhile, for the loop to encrypt to their peer.

`ProxyHandler` is where DNS resources plug in (proxy addresses, NAT): the firewall asks it
first, and its decision is final for its flows.
"""

from __future__ import annotations

from typing import Final, Protocol

from ippacket import IpPacket


class NotMine:
    """Type of `NOT_MINE`: a packet from the TUN that is not a translated (proxied) flow."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NOT_MINE"


NOT_MINE: Final = NotMine()


class ProxyHandler(Protocol):
    """DNS resources reached through proxy addresses (implemented in the DNS/NAT work)."""

    def is_proxy(self, destination: bytes) -> bool:
        """`destination` (4 or 16 raw bytes) is a proxy address (100.96.0.0/11 or
        fd00:2021:1111:8000::/107)."""
        ...

    def from_peer(self, peer_key: bytes, packet: IpPacket, now: float) -> bytearray | None:
        """A packet to a proxy address: the translated packet to forward, or None (an ICMP
        error was queued through the handler's `reply` callable, or it dropped and counted)."""
        ...

    def to_peer(self, packet: IpPacket, now: float) -> bytearray | NotMine | None:
        """A packet from the TUN: reverse-translated if it belongs to a NAT entry (None:
        drop), else NOT_MINE so the policy's return-path check runs."""
        ...


class Firewall:
    """Skeleton: passes everything (the policy comes in the next commit)."""

    def __init__(self) -> None:
        self._proxy: ProxyHandler | None = None
        self._replies: list[bytearray] = []

    def set_proxy_handler(self, handler: ProxyHandler | None) -> None:
        self._proxy = handler

    def from_peer(self, peer_key: bytes, packet: bytearray, now: float) -> bytearray | None:
        return packet

    def to_peer(self, packet: memoryview, now: float) -> bytes | bytearray | memoryview | None:
        return packet

    def take_replies(self) -> list[bytearray]:
        replies, self._replies = self._replies, []
        return replies
