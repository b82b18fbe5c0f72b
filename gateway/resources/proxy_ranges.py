"""The address ranges DNS resources are reached through (Firezone's): a peer granted a DNS
resource gets proxy addresses from these for each name (gateway/dns/proxy.py), and the NAT
translates them to the name's real addresses (gateway/nat/handler.py)."""

from __future__ import annotations

import ipaddress

IPV4_RANGE = ipaddress.IPv4Network("100.96.0.0/11")
IPV6_RANGE = ipaddress.IPv6Network("fd00:2021:1111:8000::/107")


def proxy_range_holding(
    network: ipaddress.IPv4Network | ipaddress.IPv6Network,
) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    """The proxy range `network` lies in, or None. While DNS resources exist, no peer may
    own addresses there: they stand for resource names (config load and `wg set` refuse it).
    A network around a range is fine: proxy addresses are matched before routes."""
    if network.version == 4:  # noqa: PLR2004 - IP version
        return IPV4_RANGE if network.subnet_of(IPV4_RANGE) else None
    return IPV6_RANGE if network.subnet_of(IPV6_RANGE) else None
