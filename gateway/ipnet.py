"""IP networks and interface addresses: the one type of each and a parser that explains."""

from __future__ import annotations

import ipaddress

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


class NetworkError(ValueError):
    """Text that is not a network; says what was wrong (and the likely fix)."""


class HostBitsSet(NetworkError):
    """An address with a prefix length whose host bits are set (`10.0.0.1/24`)."""


def parse_network(text: str) -> IPNetwork:
    """`10.0.0.0/24`, `fd00::/64`, or a bare address (a /32 or /128).

    Raises HostBitsSet naming the network meant, or NetworkError for anything else, a
    scoped address (`fe80::%eth0/64`) included: routes, rings and the UAPI carry no zone.
    """
    if "%" in text:
        raise NetworkError(f"{text!r}: a zone (%...) has no place in a network")
    try:
        return ipaddress.ip_network(text)
    except ValueError:
        pass
    try:
        host = ipaddress.ip_interface(text)
    except ValueError:
        raise NetworkError(f"{text!r} is not an IP network") from None
    raise HostBitsSet(f"{text} has host bits set; did you mean {host.network}?")


def parse_interface(text: str) -> IPInterface:
    """An address with prefix length (`100.64.0.1/10`; a bare address is a /32 or /128);
    NetworkError otherwise, a scoped one (`fe80::1%eth0/64`) included."""
    if "%" in text:
        raise NetworkError(f"{text!r}: a zone (%...) has no place in an interface address")
    try:
        return ipaddress.ip_interface(text)
    except ValueError:
        raise NetworkError(f"{text!r} is not an IP address with prefix length") from None
