"""RFC 7915's ICMP type/code tables (sections 4.2 and 5.2), as data and two pure functions.

Each function maps an ICMP message's (type, code, rest of header) to the other family's, or
returns None where the RFC says to drop the message silently: informational messages that are
obsolete or single-hop (timestamp, router and neighbour discovery, MLD, redirect, ...), codes
and types without a counterpart, and parameter-problem pointers to a field the other header
lacks. "Rest of header" is bytes 4-7 of the ICMP header as one 32-bit integer: the echo
identifier and sequence, the next-hop MTU (low 16 bits in ICMPv4, all 32 in ICMPv6), or the
parameter-problem pointer (top 8 bits in ICMPv4, all 32 in ICMPv6). RFC 4884 length fields
are not carried over: the translator drops ICMP extensions (see translate.py).
"""

from __future__ import annotations

from typing import TypeAlias

IcmpHeader: TypeAlias = tuple[int, int, int]  # type, code, rest of header

# --- ICMPv4 -> ICMPv6 (RFC 7915 4.2) ----------------------------------------------------------

V4_ECHO_TO_V6 = {8: 128, 0: 129}
V4_DESTINATION_UNREACHABLE = 3
V4_TIME_EXCEEDED = 11
V4_PARAMETER_PROBLEM = 12
V4_PROTOCOL_UNREACHABLE = 2
V4_FRAGMENTATION_NEEDED = 4
# Destination unreachable codes that stay destination unreachable (type 1), with their code.
# Absent: 2 (protocol) and 4 (fragmentation needed) have rules of their own; 14 (host
# precedence violation) and codes above 15 have no counterpart.
V4_UNREACHABLE_CODES = {
    0: 0,  # net unreachable -> no route
    1: 0,  # host unreachable -> no route
    3: 4,  # port unreachable -> port unreachable
    5: 0,  # source route failed -> no route
    6: 0,  # destination network unknown
    7: 0,  # destination host unknown
    8: 0,  # source host isolated
    9: 1,  # network administratively prohibited -> administratively prohibited
    10: 1,  # host administratively prohibited
    11: 0,  # network unreachable for TOS
    12: 0,  # host unreachable for TOS
    13: 1,  # communication administratively prohibited
    15: 1,  # precedence cutoff in effect
}
# Parameter problem pointer (RFC 7915 Figure 3): IPv4 header byte -> IPv6 header byte.
# Identification, flags/fragment offset and the header checksum have no counterpart.
V4_POINTER_TO_V6 = {
    0: 0,  # version/IHL -> version/traffic class
    1: 1,  # type of service -> traffic class
    2: 4,  # total length -> payload length
    3: 4,
    8: 7,  # TTL -> hop limit
    9: 6,  # protocol -> next header
    **{byte: 8 for byte in range(12, 16)},  # source address
    **{byte: 24 for byte in range(16, 20)},  # destination address
}
V4_POINTER_CODES = frozenset({0, 2})  # pointer indicates the error; bad length
V6_NEXT_HEADER_AT = 6
IPV6_MIN_MTU = 1280
IPV6_HEADER_GROWTH = 20  # an IPv6 header without options is 20 bytes longer than IPv4's
# RFC 1191 7.1 plateaus, for a fragmentation needed from a router that left the MTU 0.
MTU_PLATEAUS = (65535, 32000, 17914, 8166, 4352, 2002, 1492, 1006, 508, 296, 68)

# --- ICMPv6 -> ICMPv4 (RFC 7915 5.2) ----------------------------------------------------------

V6_ECHO_TO_V4 = {128: 8, 129: 0}
V6_DESTINATION_UNREACHABLE = 1
V6_PACKET_TOO_BIG = 2
V6_TIME_EXCEEDED = 3
V6_PARAMETER_PROBLEM = 4
V6_UNREACHABLE_CODES = {
    0: 1,  # no route -> host unreachable
    1: 10,  # administratively prohibited -> host administratively prohibited
    2: 1,  # beyond scope of source address -> host unreachable
    3: 1,  # address unreachable -> host unreachable
    4: 3,  # port unreachable -> port unreachable
}
V6_ERRONEOUS_FIELD = 0
V6_UNRECOGNIZED_NEXT_HEADER = 1
# Parameter problem pointer (RFC 7915 Figure 6): IPv6 header byte -> IPv4 header byte.
# The flow label (bytes 2-3) and anything past the fixed header have no counterpart.
V6_POINTER_TO_V4 = {
    0: 0,  # version/traffic class -> version/IHL
    1: 1,  # traffic class/flow label -> type of service
    4: 2,  # payload length -> total length
    5: 2,
    6: 9,  # next header -> protocol
    7: 8,  # hop limit -> TTL
    **{byte: 12 for byte in range(8, 24)},  # source address
    **{byte: 16 for byte in range(24, 40)},  # destination address
}
IPV4_MIN_MTU = 68
U16_MAX = 0xFFFF


def icmpv4_to_icmpv6(kind: int, code: int, rest: int, quoted_length: int) -> IcmpHeader | None:
    """The ICMPv6 header for an ICMPv4 one, or None (drop silently). `quoted_length` is the
    total length of the quoted IPv4 packet, for an MTU of 0 (RFC 1191 plateaus)."""
    if (echo := V4_ECHO_TO_V6.get(kind)) is not None:
        return echo, code, rest
    if kind == V4_DESTINATION_UNREACHABLE:
        return _v4_unreachable(code, rest, quoted_length)
    if kind == V4_TIME_EXCEEDED:
        return V6_TIME_EXCEEDED, code, 0
    if kind == V4_PARAMETER_PROBLEM and code in V4_POINTER_CODES:
        pointer = V4_POINTER_TO_V6.get(rest >> 24)
        return None if pointer is None else (V6_PARAMETER_PROBLEM, V6_ERRONEOUS_FIELD, pointer)
    return None


def _v4_unreachable(code: int, rest: int, quoted_length: int) -> IcmpHeader | None:
    if (mapped := V4_UNREACHABLE_CODES.get(code)) is not None:
        return V6_DESTINATION_UNREACHABLE, mapped, 0
    if code == V4_PROTOCOL_UNREACHABLE:
        return V6_PARAMETER_PROBLEM, V6_UNRECOGNIZED_NEXT_HEADER, V6_NEXT_HEADER_AT
    if code == V4_FRAGMENTATION_NEEDED:
        return V6_PACKET_TOO_BIG, 0, packet_too_big_mtu(rest & U16_MAX, quoted_length)
    return None


def packet_too_big_mtu(mtu: int, quoted_length: int) -> int:
    """RFC 7915 4.2: the advertised IPv4 MTU + 20; an MTU of 0 (a router older than RFC 1191)
    is the largest plateau below the quoted packet's length. Never below IPv6's minimum of
    1280 (RFC 8200 5: a smaller report cannot be acted on), as Jool does."""
    if mtu == 0:
        mtu = next((plateau for plateau in MTU_PLATEAUS if plateau < quoted_length), 0)
    return max(IPV6_MIN_MTU, mtu + IPV6_HEADER_GROWTH)


def icmpv6_to_icmpv4(kind: int, code: int, rest: int) -> IcmpHeader | None:
    """The ICMPv4 header for an ICMPv6 one, or None (drop silently)."""
    if (echo := V6_ECHO_TO_V4.get(kind)) is not None:
        return echo, code, rest
    if kind == V6_DESTINATION_UNREACHABLE:
        mapped = V6_UNREACHABLE_CODES.get(code)
        return None if mapped is None else (V4_DESTINATION_UNREACHABLE, mapped, 0)
    if kind == V6_PACKET_TOO_BIG:
        # RFC 7915 5.2: the MTU - 20, in ICMPv4's 16-bit field (and no smaller than IPv4's
        # minimum of 68, which a bogus tiny MTU would otherwise give).
        mtu = min(U16_MAX, max(IPV4_MIN_MTU, rest - IPV6_HEADER_GROWTH))
        return V4_DESTINATION_UNREACHABLE, V4_FRAGMENTATION_NEEDED, mtu
    if kind == V6_TIME_EXCEEDED:
        return V4_TIME_EXCEEDED, code, 0
    return _v6_parameter_problem(code, rest) if kind == V6_PARAMETER_PROBLEM else None


def _v6_parameter_problem(code: int, rest: int) -> IcmpHeader | None:
    if code == V6_UNRECOGNIZED_NEXT_HEADER:
        return V4_DESTINATION_UNREACHABLE, V4_PROTOCOL_UNREACHABLE, 0
    if code == V6_ERRONEOUS_FIELD and (pointer := V6_POINTER_TO_V4.get(rest)) is not None:
        return V4_PARAMETER_PROBLEM, 0, pointer << 24
    return None  # code 2 (unrecognized option) and others: no counterpart
