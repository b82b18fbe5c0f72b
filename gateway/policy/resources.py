"""A resource: a named network behind the gateway, with optional filters."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from gateway.policy.filters import Filter

MAX_NAME_LENGTH = 64

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class Resource:
    name: str
    network: IPNetwork
    filters: tuple[Filter, ...] = ()


def parse_resource_address(text: str) -> IPNetwork:
    """An IPv4 or IPv6 network (a bare address is a /32 or /128); ValueError saying why not."""
    try:
        return ipaddress.ip_network(text)
    except ValueError:
        pass
    try:
        host = ipaddress.ip_interface(text)
    except ValueError:
        raise ValueError(
            f"expected an IPv4 or IPv6 network such as 10.98.0.0/24, got {text!r}"
        ) from None
    raise ValueError(f"{text} has host bits set; did you mean {host.network}?")
