"""The firewall stage of the crypto process: the policy (and DNS proxies) on every inner packet.

Owned by the crypto process, called by `CryptoLoop` only when resources or a proxy handler
exist (otherwise `CryptoLoop.firewall` is None and packets never reach this module):

* `from_peer`: a decrypted packet, after the core checked its source against the sending
  peer's allowed IPs (so the source names the peer: the firewall looks the peer up from it,
  and only for a packet of no known flow); returns the packet for the TUN or None (dropped
  and counted). A denied packet is answered with ICMP "administratively prohibited" from the
  address the peer tried to reach, rate-limited per peer.
* `to_peer`: a packet from the TUN before it is encrypted (the return path); returns it or
  None.
* `take_replies`: the ICMP errors generated meanwhile, for the loop to encrypt to their peer
  (they route by their destination, the peer's address).

A `ProxyStage` (gateway/nat/stage.py) is where DNS resources plug in (proxy addresses,
NAT): the firewall asks it first, and its decision is final for its flows.

Counting: plain ints here (`counts`, per-resource `take_resource_counts`), copied into the
stats segment by the loop once a second, so the hot path never touches shared memory. The
`Policy` is immutable; `set_policy` swaps it whole on reload (sessions are the Device's and
stay). Grants are keyed by the peer's public key.

Flow cache (speed): parsing costs more than the decision, so a TCP/UDP packet of a flow the
firewall already allowed skips it. The key is the raw addresses and ports, read only where
the layout is the plain one (IPv4 without options or fragments, IPv6 with the transport
header first) and the transport header fits; anything else takes the full path. Only allows
are cached, with the counts of the resource they are counted against. The peer is not part
of the entry: while the routes stay the same, the key's addresses name the peer (the source
of a packet from a peer, checked by the core; the destination of one to a peer), and the
cache is emptied when the policy or any peer's allowed IPs change
(`PeerRoutes.routes_version`: a `wg set` that moves an address to another peer) and when it
is full.

Fragments: a non-first fragment has no ports, so it is decided with port 0: it passes a
resource without port ranges for its protocol and is dropped (no ICMP error about a
fragment) where the resource lists ports.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from gateway.config import GatewayConfig
from gateway.dataplane.flow import FlowKey, flow_key
from gateway.nat.stage import NotMine, ProxyStage
from gateway.policy import Action, Decision, IcmpErrorLimiter, Policy
from gateway.policy.engine import is_icmp_redirect
from gateway.policy.recent_flows import RecentFlows, flow_of, quoted_flow
from ippacket import ImpossiblePacket, IpPacket, MalformedPacket
from ippacket.icmp_errors import Unreachable, destination_unreachable

_IPV4 = 4
_IPV6 = 6
_TCP, _UDP = 6, 17
FLOW_CACHE_MAX = 16384  # per direction and protocol; emptied when full
_ICMP_ERROR_QUOTE = 8  # the quoted packet starts after the 8-byte ICMP header
MAX_REPLIES = 1000  # queued between two loop turns; beyond that they are dropped and counted


class PeerRoutes(Protocol):
    """Which peer's allowed IPs contain an address: the Device's table."""

    @property
    def routes_version(self) -> int:
        """Changes whenever the answers of `peer_key_for` may have changed."""
        ...

    def peer_key_for(self, address: bytes) -> bytes | None:
        """The public key of the peer whose allowed IPs contain a raw 4/16-byte address."""
        ...


@dataclass
class FirewallCounts:
    """What the firewall counted since it was built (the loop copies deltas out)."""

    policy_drops: int = 0
    malformed: int = 0
    routing_header: int = 0  # IPv6 Routing header with segments left (either direction)
    icmp_errors_sent: int = 0
    icmp_errors_rate_limited: int = 0
    replies_dropped: int = 0  # replies beyond MAX_REPLIES between two loop turns


# Per resource: [packets allowed, bytes allowed, packets denied].
ResourceCounts = list[int]
# An allowed flow -> the counts of the resource it is counted against (a scratch list that
# nobody reads for an allow without a resource: the gateway's own addresses).
_FlowTables = dict[int, dict[bytes, ResourceCounts]]


def build_policy(config: GatewayConfig) -> Policy:
    """The config's resources and each peer's grants (by public key); the gateway's own
    tunnel addresses answer its DNS server's port and ICMP echo."""
    return Policy(
        config.resources,
        {peer.public_key: peer.resources for peer in config.peers},
        own_addresses=[address.ip for address in config.interface.addresses],
        dns_port=None if config.dns is None else config.dns.port,
    )


class Firewall:
    """The policy applied to packets, with counters and the ICMP errors it owes peers."""

    def __init__(
        self,
        policy: Policy,
        routes: PeerRoutes,
        limiter: IcmpErrorLimiter | None = None,
    ) -> None:
        self._routes = routes
        self._routes_version = routes.routes_version
        self._peer_for = routes.peer_key_for
        self._limiter = IcmpErrorLimiter() if limiter is None else limiter
        self._proxy: ProxyStage | None = None
        self._replies: list[bytearray] = []
        self.counts = FirewallCounts()
        # Counts of resources that a reload removed or renumbered, until the next take.
        self._retired: dict[str, ResourceCounts] = {}
        self._policy = policy
        self._resource_counts: list[ResourceCounts] = [[0, 0, 0] for _ in policy.resources]
        self._uncounted: ResourceCounts = [0, 0, 0]  # allowed flows of no resource count here
        self._inbound_flows: _FlowTables = {_TCP: {}, _UDP: {}}
        self._outbound_flows: _FlowTables = {_TCP: {}, _UDP: {}}
        self._recent = RecentFlows()  # what ICMP errors toward each peer may quote

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
        self._forget_flows()

    def _forget_flows(self) -> None:
        self._routes_version = self._routes.routes_version
        for tables in (self._inbound_flows, self._outbound_flows):
            for table in tables.values():
                table.clear()

    def set_proxy_handler(self, handler: ProxyStage | None) -> None:
        self._proxy = handler

    def reply(self, packet: bytearray) -> None:
        """Queue a packet (an ICMP error) for a peer: the policy's and the proxy handler's."""
        if len(self._replies) >= MAX_REPLIES:
            self.counts.replies_dropped += 1
            return
        self._replies.append(packet)

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

    def from_peer(self, packet: bytearray, now: float) -> bytearray | None:
        """A decrypted packet whose source the core checked against the sending peer's
        allowed IPs: the packet for the TUN, or None (dropped and counted)."""
        return self.from_peer_keyed(packet, flow_key(packet), now)

    def from_peer_keyed(
        self, packet: bytearray, flow: FlowKey | None, now: float
    ) -> bytearray | None:
        """`from_peer` with the packet's `flow_key` already computed (the loop also picks
        the packet's worker with it)."""
        if self._proxy is not None:
            # The proxy handler sees every packet (NAT state): no flow cache while it is set.
            return self._from_peer(packet, None, now)
        # The flow cache, inline: this is the per-packet path of every established flow.
        if self._routes.routes_version != self._routes_version:
            self._forget_flows()
        if flow is not None:
            counts = self._inbound_flows[flow[0]].get(flow[1])
            if counts is not None:
                counts[0] += 1
                counts[1] += len(packet)
                return packet
        return self._from_peer(packet, flow, now)

    def _from_peer(self, packet: bytearray, flow: FlowKey | None, now: float) -> bytearray | None:
        """A packet of no known flow: parsed and decided."""
        parsed = self._parse(packet)
        if parsed is None:
            return None
        source, destination = _addresses(packet, parsed.version)
        peer_key = self._peer_for(source)
        if peer_key is None:  # the core delivers only sources it routed to a peer
            self.counts.policy_drops += 1
            return None
        proxy = self._proxy
        if proxy is not None and proxy.is_proxy(destination):
            return proxy.from_peer(peer_key, parsed, now)
        protocol = parsed.protocol
        port = parsed.destination_port
        if port is None:
            port = parsed.icmp_type or 0
        decision = self._policy.inbound(peer_key, destination, protocol, port)
        if self._count(decision, len(packet), self._inbound_flows, flow):
            self._recent.add(peer_key, flow_of(parsed))
            return packet
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
        self.reply(bytearray(error.data))
        self.counts.icmp_errors_sent += 1

    def to_peer(self, packet: memoryview, now: float) -> bytes | bytearray | memoryview | None:
        """A packet from the TUN before it is encrypted: the packet to send, or None."""
        passed = self.to_peer_many([packet], now)
        return passed[0] if passed else None

    def to_peer_many(
        self, packets: Sequence[memoryview], now: float
    ) -> list[bytes | bytearray | memoryview]:
        """`to_peer` of a batch (a worker ring's), in order: the packets that pass."""
        passed: list[bytes | bytearray | memoryview] = []
        if self._proxy is not None:
            # The proxy handler sees every packet (NAT state): no flow cache while it is set.
            for packet in packets:
                out = self._to_peer(packet, None, now)
                if out is not None:
                    passed.append(out)
            return passed
        if self._routes.routes_version != self._routes_version:
            self._forget_flows()  # routes change between batches, never within one
        tables = self._outbound_flows
        for packet in packets:
            # The flow cache, inline: allowed for the peer the destination routed to then,
            # and still does (the routes did not change since).
            flow = flow_key(packet)
            if flow is not None:
                counts = tables[flow[0]].get(flow[1])
                if counts is not None:
                    counts[0] += 1
                    counts[1] += len(packet)
                    passed.append(packet)
                    continue
            out = self._to_peer(packet, flow, now)
            if out is not None:
                passed.append(out)
        return passed

    def _to_peer(
        self, packet: memoryview, flow: FlowKey | None, now: float
    ) -> bytes | bytearray | memoryview | None:
        """A packet of no known flow: parsed and decided."""
        parsed = self._parse(packet)
        if parsed is None:
            return None
        if is_icmp_redirect(parsed.protocol, parsed.icmp_type):
            self.counts.policy_drops += 1  # before the proxy handler: never translated either
            return None
        proxy = self._proxy
        if proxy is not None:
            translated = proxy.to_peer(parsed, now)
            if not isinstance(translated, NotMine):
                return translated
        source, destination = _addresses(packet, parsed.version)
        peer = self._peer_for(destination)
        if peer is None:
            return packet  # no peer: the core drops and counts it (no_route)
        protocol = parsed.protocol
        quoted_flow_open = False
        port = parsed.source_port
        if port is None:
            port = parsed.icmp_type or 0
            if parsed.is_icmp_error:
                quoted_flow_open = self._quotes_open_flow(peer, parsed)
        decision = self._policy.outbound(peer, source, protocol, port, quoted_flow_open)
        if self._count(decision, len(packet), self._outbound_flows, flow):
            return packet
        return None

    def _count(
        self, decision: Decision, size: int, tables: _FlowTables, flow: FlowKey | None
    ) -> bool:
        """Count a decision against its resource (and as a policy drop); remember an
        allowed flow. True if the packet may pass."""
        index = decision.resource
        counted = None if index is None else self._resource_counts[index]
        if decision.action is Action.ALLOW:
            if counted is not None:
                counted[0] += 1
                counted[1] += size
            if flow is not None:
                _remember(tables[flow[0]], flow[1], self._uncounted if counted is None else counted)
            return True
        self.counts.policy_drops += 1
        if counted is not None:
            counted[2] += 1
        return False

    def _parse(self, packet: bytearray | memoryview) -> IpPacket | None:
        """The parsed packet, or None after counting why not (malformed, source-routed)."""
        try:
            parsed = IpPacket(packet)
        except MalformedPacket:
            self.counts.malformed += 1
            return None
        if parsed.is_source_routed:  # decided on a destination that is not the final one
            self.counts.routing_header += 1
            return None
        return parsed

    def _quotes_open_flow(self, peer: bytes, error: IpPacket) -> bool:
        """Whether the packet an ICMP error quotes is of a flow `peer` has open: one it sent
        lately (RecentFlows), or one in the flow cache whose source is the peer's."""
        offset = error.l4_offset
        if offset is None:
            return False
        quote = error.data[offset + _ICMP_ERROR_QUOTE :]
        flow = quoted_flow(quote)
        if flow is None:
            return False
        if self._recent.has(peer, flow):
            return True
        cached = self._inbound_flows.get(flow[0])
        if cached is None or flow[1] not in cached:
            return False
        size = len(flow[1]) // 2 - 2  # the key: two addresses, then the two ports
        return self._peer_for(flow[1][:size]) == peer


def _addresses(packet: bytes | bytearray | memoryview, version: int) -> tuple[bytes, bytes]:
    """The raw source and destination addresses of a parsed IP packet of `version`."""
    if version == _IPV4:
        return bytes(packet[12:16]), bytes(packet[16:20])
    return bytes(packet[8:24]), bytes(packet[24:40])


def _remember(table: dict[bytes, ResourceCounts], key: bytes, counts: ResourceCounts) -> None:
    if len(table) >= FLOW_CACHE_MAX:
        table.clear()
    table[key] = counts
