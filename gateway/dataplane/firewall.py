"""The firewall stage of the crypto process: the policy (and DNS proxies) on every inner packet.

Owned by the crypto process, called by `CryptoLoop` only when resources or a proxy handler
exist (otherwise `CryptoLoop.firewall` is None and packets never reach this module):

* `from_peer`: a decrypted packet, after the core checked its source against the peer's
  allowed IPs; returns the packet for the TUN or None (dropped and counted). A denied packet
  is answered with ICMP "administratively prohibited" from the address the peer tried to
  reach, rate-limited per peer.
* `to_peer`: a packet from the TUN before it is encrypted (the return path); returns it or
  None.
* `take_replies`: the ICMP errors generated meanwhile, for the loop to encrypt to their peer
  (they route by their destination, the peer's address).

`ProxyHandler` is where DNS resources plug in (proxy addresses, NAT): the firewall asks it
first, and its decision is final for its flows.

Counting: plain ints here (`counts`, per-resource `take_resource_counts`), copied into the
stats segment by the loop once a second, so the hot path never touches shared memory. The
`Policy` is immutable; `set_policy` swaps it whole on reload (sessions are the Device's and
stay). Grants are keyed by the peer's public key.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Protocol

from gateway.config import GatewayConfig
from gateway.policy import Action, IcmpErrorLimiter, Policy
from ippacket import ImpossiblePacket, IpPacket, MalformedPacket
from ippacket.icmp_errors import Unreachable, destination_unreachable

_IPV4 = 4
_ICMP_ERROR_QUOTE = 8  # the quoted packet starts after the 8-byte ICMP header

# Looks up which peer's allowed IPs contain a raw 4- or 16-byte address (the Device's table).
PeerLookup = Callable[[bytes], bytes | None]


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


@dataclass
class FirewallCounts:
    """What the firewall counted since it was built (the loop copies deltas out)."""

    policy_drops: int = 0
    malformed: int = 0
    icmp_errors_sent: int = 0
    icmp_errors_rate_limited: int = 0


# Per resource: [packets allowed, bytes allowed, packets denied].
ResourceCounts = list[int]


def build_policy(config: GatewayConfig) -> Policy:
    """The config's resources and each peer's grants (by public key); the gateway's own
    tunnel addresses are always reachable."""
    return Policy(
        config.resources,
        {peer.public_key: peer.resources for peer in config.peers},
        own_addresses=[address.ip for address in config.interface.addresses],
    )


class Firewall:
    """The policy applied to packets, with counters and the ICMP errors it owes peers."""

    def __init__(
        self,
        policy: Policy,
        peer_for: PeerLookup,
        limiter: IcmpErrorLimiter | None = None,
    ) -> None:
        self._peer_for = peer_for
        self._limiter = IcmpErrorLimiter() if limiter is None else limiter
        self._proxy: ProxyHandler | None = None
        self._replies: list[bytearray] = []
        self.counts = FirewallCounts()
        # Counts of resources that a reload removed or renumbered, until the next take.
        self._retired: dict[str, ResourceCounts] = {}
        self._policy = policy
        self._resource_counts: list[ResourceCounts] = [[0, 0, 0] for _ in policy.resources]

    @property
    def policy(self) -> Policy:
        return self._policy

    @property
    def active(self) -> bool:
        """Whether the loop must call the firewall at all (resources or DNS proxies)."""
        return self._policy.enabled or self._proxy is not None

    def set_policy(self, policy: Policy) -> None:
        """Apply new resources and grants from now on (a reload)."""
        self._retire_counts()
        self._policy = policy
        self._resource_counts = [[0, 0, 0] for _ in policy.resources]

    def set_proxy_handler(self, handler: ProxyHandler | None) -> None:
        self._proxy = handler

    def take_replies(self) -> list[bytearray]:
        replies, self._replies = self._replies, []
        return replies

    def take_resource_counts(self) -> dict[str, ResourceCounts]:
        """Per resource name, what was counted since the last take (every current resource
        is present, so the caller also learns which names exist now)."""
        self._retire_counts()
        taken, self._retired = self._retired, {}
        return taken

    def _retire_counts(self) -> None:
        for resource, counts in zip(self._policy.resources, self._resource_counts, strict=True):
            kept = self._retired.setdefault(resource.name, [0, 0, 0])
            for i, value in enumerate(counts):
                kept[i] += value
                counts[i] = 0

    # --- the data path --------------------------------------------------------------------

    def from_peer(self, peer_key: bytes, packet: bytearray, now: float) -> bytearray | None:
        try:
            parsed = IpPacket(packet)
        except MalformedPacket:
            self.counts.malformed += 1
            return None
        destination = bytes(packet[16:20] if parsed.version == _IPV4 else packet[24:40])
        proxy = self._proxy
        if proxy is not None and proxy.is_proxy(destination):
            return proxy.from_peer(peer_key, parsed, now)
        protocol = parsed.protocol
        port = parsed.destination_port
        if port is None:
            port = parsed.icmp_type or 0
        decision = self._policy.inbound(peer_key, destination, protocol, port)
        index = decision.resource
        if decision.action is Action.ALLOW:
            if index is not None:
                counts = self._resource_counts[index]
                counts[0] += 1
                counts[1] += len(packet)
            return packet
        self.counts.policy_drops += 1
        if index is not None:
            self._resource_counts[index][2] += 1
        if decision.action is Action.PROHIBIT:
            self._prohibit(peer_key, parsed, now)
        return None

    def _prohibit(self, peer_key: bytes, packet: IpPacket, now: float) -> None:
        """Queue ICMP "administratively prohibited" from the address the peer tried to reach."""
        if not self._limiter.allow(peer_key, now):
            self.counts.icmp_errors_rate_limited += 1
            return
        try:
            error = destination_unreachable(packet, Unreachable.PROHIBITED)
        except ImpossiblePacket:
            return  # about an ICMP error or a fragment, or to/from a non-unicast address
        self._replies.append(bytearray(error.data))
        self.counts.icmp_errors_sent += 1

    def to_peer(self, packet: memoryview, now: float) -> bytes | bytearray | memoryview | None:
        try:
            parsed = IpPacket(packet)
        except MalformedPacket:
            self.counts.malformed += 1
            return None
        proxy = self._proxy
        if proxy is not None:
            translated = proxy.to_peer(parsed, now)
            if not isinstance(translated, NotMine):
                return translated
        if parsed.version == _IPV4:
            source, destination = bytes(packet[12:16]), bytes(packet[16:20])
        else:
            source, destination = bytes(packet[8:24]), bytes(packet[24:40])
        peer = self._peer_for(destination)
        if peer is None:
            return packet  # no peer: the core drops and counts it (no_route)
        protocol = parsed.protocol
        quoted_from_peer = False
        port = parsed.source_port
        if port is None:
            port = parsed.icmp_type or 0
            if parsed.is_icmp_error:
                quoted_from_peer = self._quoted_source_is(peer, parsed)
        decision = self._policy.outbound(peer, source, protocol, port, quoted_from_peer)
        index = decision.resource
        if decision.action is Action.ALLOW:
            if index is not None:
                counts = self._resource_counts[index]
                counts[0] += 1
                counts[1] += len(packet)
            return packet
        self.counts.policy_drops += 1
        if index is not None:
            self._resource_counts[index][2] += 1
        return None

    def _quoted_source_is(self, peer: bytes, error: IpPacket) -> bool:
        """Whether the packet an ICMP error quotes was sent by `peer` (its source lies in
        the peer's allowed IPs)."""
        offset = error.l4_offset
        if offset is None:
            return False
        quote = error.data[offset + _ICMP_ERROR_QUOTE :]
        if len(quote) < 20:  # noqa: PLR2004 - shortest IPv4 header
            return False
        version = quote[0] >> 4
        if version == _IPV4:
            source = bytes(quote[12:16])
        elif len(quote) >= 40:  # noqa: PLR2004 - IPv6 header
            source = bytes(quote[8:24])
        else:
            return False
        return self._peer_for(source) == peer
