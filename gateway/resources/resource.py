"""A resource: a named network, or DNS name pattern, behind the gateway, with optional filters."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.ipnet import HostBitsSet, IPNetwork, NetworkError, parse_network
from gateway.resources.filters import Filter
from gateway.resources.names import NamePattern, parse_name_pattern

MAX_NAME_LENGTH = 64


@dataclass(frozen=True, slots=True)
class Resource:
    name: str
    # A network resource is forwarded as it is; a DNS resource is reached through proxy
    # addresses that the gateway's DNS server hands out (gateway/dns/).
    address: IPNetwork | NamePattern
    filters: tuple[Filter, ...] = ()

    @property
    def network(self) -> IPNetwork | None:
        return None if isinstance(self.address, NamePattern) else self.address

    @property
    def pattern(self) -> NamePattern | None:
        return self.address if isinstance(self.address, NamePattern) else None


def parse_resource_address(text: str) -> IPNetwork | NamePattern:
    """An IPv4 or IPv6 network (a bare address is a /32 or /128), else a DNS name or `*.`
    pattern; ValueError saying why it is neither."""
    try:
        return parse_network(text)
    except HostBitsSet:
        raise
    except NetworkError:
        pass
    expected = (
        "expected an IPv4 or IPv6 network such as 10.98.0.0/24 "
        f"or a DNS name such as app.corp.test or *.corp.test, got {text!r}"
    )
    last_label = text.rstrip(".").rpartition(".")[2]
    if "/" in text or ":" in text or last_label.isdigit():
        raise ValueError(expected)  # a mistyped address, not a name
    try:
        return parse_name_pattern(text)
    except ValueError as exc:
        raise ValueError(f"{expected} ({exc})") from None
