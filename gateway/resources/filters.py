"""Filters of a resource: which protocols and ports it admits (Firezone's filter engine).

No filters: every protocol and port. Otherwise TCP and UDP destination ports are checked
against the port ranges given for that protocol, an `icmp` filter admits every ICMP and
ICMPv6 type, and any protocol no filter names (including other IP protocols) is denied.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

IPPROTO_ICMP = 1
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_ICMPV6 = 58
MAX_PORT = 65535


class Protocol(StrEnum):
    TCP = "tcp"
    UDP = "udp"
    ICMP = "icmp"


@dataclass(frozen=True, slots=True)
class PortRange:
    start: int
    end: int

    def __str__(self) -> str:
        return str(self.start) if self.start == self.end else f"{self.start}-{self.end}"


@dataclass(frozen=True, slots=True)
class Filter:
    protocol: Protocol
    # None: every port (and always None for icmp).
    ports: PortRange | None = None

    def __str__(self) -> str:
        return f"{self.protocol}/{self.ports}" if self.ports else str(self.protocol)


def parse_ports(text: str) -> PortRange:
    """`"443"` or `"5000-5010"`; ValueError saying what is wrong."""
    start_text, dash, end_text = text.partition("-")
    if not dash:
        end_text = start_text
    bounds = []
    for part in (start_text, end_text):
        if not part.isdigit() or not 1 <= int(part) <= MAX_PORT:
            raise ValueError(f'expected a port 1..{MAX_PORT} or a range "start-end", got {text!r}')
        bounds.append(int(part))
    if bounds[0] > bounds[1]:
        raise ValueError(f"range {text!r} ends before it starts")
    return PortRange(bounds[0], bounds[1])


def parse_filter(protocol: str, ports: str | None) -> Filter:
    """One `{ protocol = ..., ports = ... }` entry; ValueError saying what is wrong."""
    try:
        proto = Protocol(protocol)
    except ValueError:
        choices = ", ".join(p.value for p in Protocol)
        raise ValueError(f"unknown protocol {protocol!r} (expected one of {choices})") from None
    if ports is None:
        return Filter(proto)
    if proto is Protocol.ICMP:
        raise ValueError("icmp has no ports")
    return Filter(proto, parse_ports(ports))


class FilterSet:
    """The filters of one resource, compiled for `permits`."""

    __slots__ = ("_icmp", "_permit_all", "_tcp", "_udp")

    def __init__(self, filters: tuple[Filter, ...]) -> None:
        self._permit_all = not filters
        self._icmp = any(f.protocol is Protocol.ICMP for f in filters)
        self._tcp = self._ranges(filters, Protocol.TCP)
        self._udp = self._ranges(filters, Protocol.UDP)

    @staticmethod
    def _ranges(filters: tuple[Filter, ...], protocol: Protocol) -> tuple[tuple[int, int], ...]:
        return tuple(
            (f.ports.start, f.ports.end) if f.ports else (0, MAX_PORT)
            for f in filters
            if f.protocol is protocol
        )

    def permits(self, protocol: int, port: int) -> bool:
        """`port`: the resource-side TCP/UDP port; ignored for other protocols."""
        if self._permit_all:
            return True
        if protocol == IPPROTO_TCP:
            ranges = self._tcp
        elif protocol == IPPROTO_UDP:
            ranges = self._udp
        else:
            return self._icmp and protocol in (IPPROTO_ICMP, IPPROTO_ICMPV6)
        return any(start <= port <= end for start, end in ranges)
