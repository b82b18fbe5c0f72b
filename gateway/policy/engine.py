"""The per-packet decision: may this peer reach this destination (and hear back from it)?

Semantics (Firezone's gateway; the peer is already authenticated and its inner source address
checked against its allowed IPs by the WireGuard core):

- No resources configured: everything passes (a plain WireGuard router), uncounted.
- Peer to resource (`inbound`): multicast destinations and ICMP errors sent by peers are
  dropped; the gateway's own tunnel addresses answer DNS (UDP and TCP on the DNS server's
  port, when it runs) and ICMP echo, nothing else of the host unless a granted resource
  holds the address (a peer must not reach every service the gateway host listens on);
  otherwise, among the
  granted resources whose network contains the destination, the most specific one whose
  filters permit the packet decides (a permitting filter beats a longer prefix that does
  not). None permits: "administratively prohibited" (counted against the most specific
  containing resource, if any).
- Resource to peer (`outbound`): ICMP redirects never pass; packets from the gateway's own
  addresses pass; an ICMP error passes when the packet it quotes is of a flow this peer has
  open (`recent_flows`); otherwise the source must lie in a
  granted resource whose filters permit the source port (stateless return-path filtering).

Decisions are cached per (peer, address, protocol, port); the cache is bounded and belongs to
one `Policy`, which is rebuilt whole on reload, so it never serves a stale grant.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass
from enum import Enum

from gateway.ipnet import IPNetwork
from gateway.resources.filters import IPPROTO_ICMP, IPPROTO_ICMPV6, Filter, FilterSet
from gateway.resources.resource import Resource

CACHE_MAX_ENTRIES = 16384
_V4_MULTICAST = int(ipaddress.IPv4Address("224.0.0.0")) >> 28  # 224.0.0.0/4
_V6_MULTICAST = 0xFF  # ff00::/8
# ICMPv4 error types (RFC 792 / RFC 1812): unreachable, source quench, redirect, time exceeded,
# parameter problem. ICMPv6 errors are the types below 128 (RFC 4443).
_ICMPV4_ERRORS = frozenset({3, 4, 5, 11, 12})
_ICMPV6_FIRST_INFO = 128
_REDIRECTS = frozenset({(IPPROTO_ICMP, 5), (IPPROTO_ICMPV6, 137)})
_IPPROTO_TCP, _IPPROTO_UDP = 6, 17
_ECHO_REQUEST = {IPPROTO_ICMP: 8, IPPROTO_ICMPV6: 128}
DEFAULT_DNS_PORT = 53


class Action(Enum):
    ALLOW = "allow"
    DROP = "drop"  # silently, counted by the caller
    PROHIBIT = "prohibit"  # drop and answer with ICMP "administratively prohibited"


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    # Index into Policy.resources of the resource the packet is counted against, if any.
    resource: int | None = None


ALLOW_UNCOUNTED = Decision(Action.ALLOW)
DROP = Decision(Action.DROP)
_PROHIBIT_UNMATCHED = Decision(Action.PROHIBIT)


def is_icmp_error(protocol: int, icmp_type: int) -> bool:
    if protocol == IPPROTO_ICMP:
        return icmp_type in _ICMPV4_ERRORS
    return protocol == IPPROTO_ICMPV6 and icmp_type < _ICMPV6_FIRST_INFO


def is_icmp_redirect(protocol: int, icmp_type: int | None) -> bool:
    """ICMPv4 redirect (5) or ICMPv6 redirect (137): never passed in either direction (a
    route change by anyone behind the gateway, or by a peer, is never wanted)."""
    return (protocol, icmp_type) in _REDIRECTS


def _is_multicast(address: bytes) -> bool:
    if len(address) == 4:  # noqa: PLR2004 - IPv4 address length
        return address[0] >> 4 == _V4_MULTICAST
    return address[0] == _V6_MULTICAST


@dataclass(frozen=True, slots=True)
class _Grant:
    """One granted resource, ready for matching raw addresses."""

    index: int
    size: int  # 4 or 16 bytes
    key: int  # network address >> host bits
    shift: int  # host bits
    prefix_len: int
    filters: FilterSet
    allow: Decision
    prohibit: Decision

    def contains(self, size: int, address: int) -> bool:
        return size == self.size and address >> self.shift == self.key


class Policy:
    """Resources, grants and the gateway's own addresses; immutable once built."""

    def __init__(
        self,
        resources: Iterable[Resource],
        grants: Mapping[Hashable, Iterable[str]],
        own_addresses: Iterable[ipaddress.IPv4Address | ipaddress.IPv6Address] = (),
        dns_port: int | None = DEFAULT_DNS_PORT,
    ) -> None:
        """`own_addresses`: the gateway's tunnel addresses; `dns_port`: where its DNS server
        answers on them (None: no DNS server, only ICMP echo reaches them)."""
        self.resources: tuple[Resource, ...] = tuple(resources)
        self.enabled = bool(self.resources)
        index_of = {r.name: i for i, r in enumerate(self.resources)}
        # Network resources only: DNS resources are matched by proxy address (gateway/nat/).
        compiled = {
            i: self._compile(i, r.network, r.filters)
            for i, r in enumerate(self.resources)
            if r.network is not None
        }
        # Per peer, most specific first (the order `_best` relies on), then by name.
        self._grants: dict[Hashable, tuple[_Grant, ...]] = {
            peer: tuple(
                sorted(
                    {compiled[index_of[n]] for n in names if index_of[n] in compiled},
                    key=lambda g: (-g.prefix_len, self.resources[g.index].name),
                )
            )
            for peer, names in grants.items()
        }
        self._granted_names = {
            peer: sorted(set(names), key=lambda n: (-self._specificity(index_of[n]), n))
            for peer, names in grants.items()
        }
        self._own = frozenset(a.packed for a in own_addresses)
        self._dns_port = dns_port
        self._cache: dict[tuple[Hashable, bytes, int, int, bool], Decision] = {}

    def _specificity(self, index: int) -> int:
        network = self.resources[index].network
        return -1 if network is None else network.prefixlen

    @staticmethod
    def _compile(index: int, network: IPNetwork, filters: tuple[Filter, ...]) -> _Grant:
        shift = network.max_prefixlen - network.prefixlen
        return _Grant(
            index=index,
            size=network.max_prefixlen // 8,
            key=int(network.network_address) >> shift,
            shift=shift,
            prefix_len=network.prefixlen,
            filters=FilterSet(filters),
            allow=Decision(Action.ALLOW, index),
            prohibit=Decision(Action.PROHIBIT, index),
        )

    def granted(self, peer: Hashable) -> list[str]:
        """Names of the resources `peer` may reach, most specific first."""
        return list(self._granted_names.get(peer, ()))

    def inbound(
        self, peer: Hashable, destination: bytes, protocol: int, port_or_type: int
    ) -> Decision:
        """A packet from `peer` to `destination` (raw 4 or 16 bytes).

        `port_or_type`: the TCP/UDP destination port, or the ICMP/ICMPv6 type.
        """
        if not self.enabled:
            return ALLOW_UNCOUNTED
        key = (peer, destination, protocol, port_or_type, True)
        decision = self._cache.get(key)
        if decision is None:
            decision = self._inbound(peer, destination, protocol, port_or_type)
            self._remember(key, decision)
        return decision

    def _inbound(self, peer: Hashable, dst: bytes, protocol: int, port_or_type: int) -> Decision:
        if (
            _is_multicast(dst)
            or is_icmp_error(protocol, port_or_type)
            or is_icmp_redirect(protocol, port_or_type)
        ):
            return DROP
        if dst in self._own and self._served_on_own(protocol, port_or_type):
            return ALLOW_UNCOUNTED
        return self._best(peer, dst, protocol, port_or_type, _PROHIBIT_UNMATCHED)

    def _served_on_own(self, protocol: int, port_or_type: int) -> bool:
        """What the gateway serves peers on its tunnel addresses: DNS and ICMP echo."""
        if protocol in (_IPPROTO_UDP, _IPPROTO_TCP):
            return port_or_type == self._dns_port
        return _ECHO_REQUEST.get(protocol) == port_or_type

    def outbound(
        self,
        peer: Hashable,
        source: bytes,
        protocol: int,
        port_or_type: int,
        quoted_flow_is_peers: bool = False,
    ) -> Decision:
        """A packet from `source` behind the gateway to `peer`.

        `port_or_type`: the TCP/UDP source port, or the ICMP/ICMPv6 type.
        `quoted_flow_is_peers`: for an ICMP error, whether the packet it quotes is of a flow
        this peer has open (the caller parses the quote and looks it up: RecentFlows).
        Redirects never pass.
        """
        if not self.enabled:
            return ALLOW_UNCOUNTED
        if is_icmp_redirect(protocol, port_or_type):
            return DROP
        if source in self._own:
            return ALLOW_UNCOUNTED
        if is_icmp_error(protocol, port_or_type):
            return ALLOW_UNCOUNTED if quoted_flow_is_peers else DROP
        key = (peer, source, protocol, port_or_type, False)
        decision = self._cache.get(key)
        if decision is None:
            decision = self._best(peer, source, protocol, port_or_type, DROP)
            if decision.action is Action.PROHIBIT:  # the return path never answers with ICMP
                decision = Decision(Action.DROP, decision.resource)
            self._remember(key, decision)
        return decision

    def _best(
        self, peer: Hashable, address: bytes, protocol: int, port: int, unmatched: Decision
    ) -> Decision:
        size = len(address)
        value = int.from_bytes(address, "big")
        most_specific: _Grant | None = None
        for grant in self._grants.get(peer, ()):
            if not grant.contains(size, value):
                continue
            if grant.filters.permits(protocol, port):
                return grant.allow
            if most_specific is None:
                most_specific = grant
        return most_specific.prohibit if most_specific is not None else unmatched

    def _remember(self, key: tuple[Hashable, bytes, int, int, bool], decision: Decision) -> None:
        if len(self._cache) >= CACHE_MAX_ENTRIES:
            self._cache.clear()
        self._cache[key] = decision
