"""wg-quick configurations for the gateway's clients (`firezone-gw client-config`)."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.config import GatewayConfig, PeerConfig
from gateway.ipnet import IPNetwork
from gateway.keys import encode_key
from gateway.resources.proxy_ranges import IPV4_RANGE, IPV6_RANGE


class ClientConfigError(ValueError):
    """The request cannot produce a working client config (message says why)."""


@dataclass(frozen=True, slots=True)
class NewPeer:
    """A peer to add to the gateway config, for a client whose key we just generated."""

    public_key: bytes
    allowed_ips: tuple[IPNetwork, ...]


def client_addresses(peer: PeerConfig) -> list[str]:
    """The client's own tunnel addresses: its host routes among the allowed IPs."""
    return [str(n) for n in peer.allowed_ips if n.prefixlen == n.max_prefixlen]


def routes_for(config: GatewayConfig, extra: Sequence[IPNetwork]) -> list[str]:
    """What the client sends through the gateway: the tunnel networks, the proxy ranges
    when DNS resources exist (their names resolve to proxy addresses), plus `extra`."""
    routes: list[IPNetwork] = [a.network for a in config.interface.addresses]
    if any(r.pattern is not None for r in config.resources):
        routes += [IPV4_RANGE, IPV6_RANGE]
    routes += [n for n in extra if n not in routes]
    return [str(n) for n in routes]


def render(  # noqa: PLR0913 - every line of the [Interface]/[Peer] pair is a parameter
    config: GatewayConfig,
    *,
    peer: PeerConfig,
    endpoint: str,
    private_key: bytes | None,
    routes: Sequence[IPNetwork] = (),
    keepalive: int = 25,
) -> str:
    addresses = client_addresses(peer)
    if not addresses:
        raise ClientConfigError(
            f"peer {encode_key(peer.public_key)} has no /32 or /128 in allowed_ips to use as"
            " the client's address"
        )
    allowed = routes_for(config, routes)
    if not allowed:
        raise ClientConfigError(
            "nothing to route: the gateway has no addresses; pass --route CIDR for the"
            " networks behind it"
        )
    key_line = (
        encode_key(private_key)
        if private_key is not None
        else "<the client's private key: the gateway never sees it>"
    )
    lines = [
        "[Interface]",
        f"PrivateKey = {key_line}",
        f"Address = {', '.join(addresses)}",
        *dns_line(config),
        f"MTU = {config.interface.mtu}",
        "",
        "[Peer]",
        f"PublicKey = {encode_key(config.interface.public_key)}",
    ]
    if peer.preshared_key is not None:
        lines.append(f"PresharedKey = {encode_key(peer.preshared_key)}")
    lines += [
        f"Endpoint = {endpoint}",
        f"AllowedIPs = {', '.join(allowed)}",
        f"PersistentKeepalive = {keepalive}",
    ]
    return "\n".join(lines) + "\n"


def dns_line(config: GatewayConfig) -> list[str]:
    """`DNS = <the gateway's tunnel addresses>` when the gateway runs a DNS server."""
    if config.dns is None or not config.interface.addresses:
        return []
    return [f"DNS = {', '.join(str(a.ip) for a in config.interface.addresses)}"]


def next_free_addresses(config: GatewayConfig) -> tuple[IPNetwork, ...]:
    """One unused host address in each tunnel network, for a new client."""
    taken = {n.network_address for p in config.peers for n in p.allowed_ips}
    result: list[IPNetwork] = []
    for interface in config.interface.addresses:
        taken.add(interface.ip)
        for host in interface.network.hosts():
            if host not in taken:
                result.append(ipaddress.ip_network(host))
                break
    return tuple(result)


def peer_toml(peer: NewPeer) -> str:
    """The [[peers]] block to append to the gateway config."""
    ips = ", ".join(f'"{n}"' for n in peer.allowed_ips)
    return f'[[peers]]\npublic_key = "{encode_key(peer.public_key)}"\nallowed_ips = [{ips}]\n'
