"""ICMP/ICMPv6 errors about a packet: destination unreachable and packet too big.

The error goes back to the original source and, unless told otherwise, comes from the original
destination (the gateway answers for the resource it refuses, as connlib does). It quotes the
start of the original packet:

* IPv4: as much as keeps the error within 576 bytes, i.e. 548 bytes of quote. RFC 792 asks for
  the IP header + 8 bytes; RFC 1812 4.3.2.3 says a router SHOULD quote as much as fits in 576
  bytes (Linux does), which gives the client the TCP sequence number and more to match on.
* IPv6: as much as keeps the error within the minimum MTU of 1280 bytes (RFC 4443 2.4(c)),
  i.e. 1232 bytes of quote.

Refused with `ImpossiblePacket` (so a policy engine cannot start an ICMP storm): an error about
an ICMP error (RFC 1122 3.2.2, RFC 4443 2.4(e)), about a non-first IPv4 fragment (RFC 1122),
to or from a multicast, broadcast or unspecified address, a source of the wrong family, and an
MTU below the minimum (68 for IPv4, RFC 791; 1280 for IPv6, RFC 8200).
"""

from __future__ import annotations

import enum
from ipaddress import IPv4Address

from ippacket.build import DEFAULT_TTL, check_field, icmp_packet
from ippacket.errors import ImpossiblePacket
from ippacket.headers import ICMPV4_DESTINATION_UNREACHABLE, ICMPV6_DESTINATION_UNREACHABLE, IPV4
from ippacket.headers import ICMPV6_PACKET_TOO_BIG as _V6_PACKET_TOO_BIG
from ippacket.packet import IpAddress, IpPacket

IPV4_ERROR_MAX = 576  # RFC 1812 4.3.2.3
IPV6_ERROR_MAX = 1280  # RFC 4443 2.4(c)
_ICMP_ERROR_HEADERS_V4 = 20 + 8
_ICMP_ERROR_HEADERS_V6 = 40 + 8
_IPV4_MTU_MIN = 68
_IPV6_MTU_MIN = 1280
_V4_FRAGMENTATION_NEEDED = 4
_BROADCAST = IPv4Address("255.255.255.255")


class Unreachable(enum.Enum):
    """Reason of a destination unreachable: (ICMPv4 code, ICMPv6 code)."""

    NETWORK = (0, 0)  # v4 net unreachable (RFC 792); v6 no route to destination (RFC 4443)
    ADDRESS = (1, 3)  # v4 host unreachable; v6 address unreachable (connlib's "network")
    PORT = (3, 4)  # port unreachable
    PROHIBITED = (13, 1)  # v4 administratively prohibited (RFC 1812 5.2.7.1); v6 code 1

    @property
    def icmpv4_code(self) -> int:
        return self.value[0]

    @property
    def icmpv6_code(self) -> int:
        return self.value[1]


def destination_unreachable(
    original: IpPacket,
    reason: Unreachable,
    *,
    source: IpAddress | None = None,
    ttl: int = DEFAULT_TTL,
) -> IpPacket:
    """ICMPv4 type 3 or ICMPv6 type 1 with `reason`'s code, quoting `original`."""
    if original.version == IPV4:
        kind, code = ICMPV4_DESTINATION_UNREACHABLE, reason.icmpv4_code
    else:
        kind, code = ICMPV6_DESTINATION_UNREACHABLE, reason.icmpv6_code
    return _error(original, kind, code, 0, source=source, ttl=ttl)


def packet_too_big(
    original: IpPacket,
    mtu: int,
    *,
    source: IpAddress | None = None,
    ttl: int = DEFAULT_TTL,
) -> IpPacket:
    """IPv4: fragmentation needed (type 3 code 4) with the next-hop MTU (RFC 1191); IPv6:
    packet too big (type 2) with the MTU (RFC 4443 3.2)."""
    if original.version == IPV4:
        if check_field("MTU", mtu, 16) < _IPV4_MTU_MIN:
            raise ImpossiblePacket(f"IPv4 MTU {mtu} below the minimum of {_IPV4_MTU_MIN}")
        kind, code = ICMPV4_DESTINATION_UNREACHABLE, _V4_FRAGMENTATION_NEEDED
    else:
        if check_field("MTU", mtu, 32) < _IPV6_MTU_MIN:
            raise ImpossiblePacket(f"IPv6 MTU {mtu} below the minimum of {_IPV6_MTU_MIN}")
        kind, code = _V6_PACKET_TOO_BIG, 0
    return _error(original, kind, code, mtu, source=source, ttl=ttl)


def _error(  # noqa: PLR0913 - shared body of the two public error builders
    original: IpPacket,
    kind: int,
    code: int,
    rest_of_header: int,
    *,
    source: IpAddress | None,
    ttl: int,
) -> IpPacket:
    if original.is_icmp_error:
        raise ImpossiblePacket(f"no ICMP error about an ICMP error ({original!r})")
    if original.version == IPV4 and original.l4_offset is None:
        raise ImpossiblePacket(f"no ICMP error about a non-first IPv4 fragment ({original!r})")
    destination = original.source
    source = original.destination if source is None else source
    for role, address in (("destination", destination), ("source", source)):
        if address.is_multicast or address.is_unspecified or address == _BROADCAST:
            raise ImpossiblePacket(f"ICMP error {role} {address} is not a unicast address")
    if original.version == IPV4:
        room = IPV4_ERROR_MAX - _ICMP_ERROR_HEADERS_V4
    else:
        room = IPV6_ERROR_MAX - _ICMP_ERROR_HEADERS_V6
    quote = original.data[:room]
    return icmp_packet(
        source, destination, kind, code, rest_of_header=rest_of_header, payload=quote, ttl=ttl
    )
