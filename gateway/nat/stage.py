"""What the crypto process's firewall asks of the DNS resources' NAT, and its "not mine".

The firewall (gateway/dataplane/firewall.py) hands a packet to a proxy address to the
`ProxyStage`, and every packet from the TUN first to its `to_peer`, which answers NOT_MINE
for a packet of no translated flow so the policy's return-path check runs.
gateway/nat/handler.py's `ProxyHandler` implements it.
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


class ProxyStage(Protocol):
    """What the firewall asks of DNS resources reached through proxy addresses (their
    NAT); gateway/nat/handler.py's `ProxyHandler` is the one implementation."""

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
