"""Builders for plain IPv4/IPv6 packets (UDP, TCP, ICMP echo, any ICMP message, raw payload).

Each returns an `IpPacket` over a new bytearray with every checksum computed, or raises
`ImpossiblePacket` naming what cannot be built (an IPv4 source with an IPv6 destination, a
packet over 65535 bytes, a value that does not fit its field). Nothing else escapes: every
value is range-checked before `struct` sees it. The family follows the addresses.

IPv4 packets are atomic datagrams (RFC 6864): DF set, identification 0, as RFC 7915's
translator writes them; TTL/hop limit 64 unless given.
"""

from __future__ import annotations

import struct

from ippacket.errors import ImpossiblePacket
from ippacket.headers import (
    ICMP,
    ICMPV4_ECHO_REPLY,
    ICMPV4_ECHO_REQUEST,
    ICMPV6,
    ICMPV6_ECHO_REPLY,
    ICMPV6_ECHO_REQUEST,
    IPV4,
    TCP,
    UDP,
    TcpHeader,
)
from ippacket.packet import IpAddress, IpPacket

DEFAULT_TTL = 64
_IPV4 = struct.Struct("!BBHHHBBH4s4s")
_IPV6 = struct.Struct("!IHBB16s16s")
_UDP = struct.Struct("!HHHH")
_TCP = struct.Struct("!HHIIBBHHH")
_ICMP = struct.Struct("!BBHI")
_IPV4_HEADER = 20
_IP_LENGTH_MAX = 0xFFFF
_DONT_FRAGMENT = 0x4000
_TCP_OPTIONS_MAX = 40


def check_field(name: str, value: int, bits: int) -> int:
    """`value` if it fits an unsigned field of `bits`, else ImpossiblePacket naming the field."""
    if not 0 <= value < 1 << bits:
        raise ImpossiblePacket(f"{name} {value} does not fit in {bits} bits")
    return value


def ip_packet(
    source: IpAddress,
    destination: IpAddress,
    protocol: int,
    payload: bytes | bytearray | memoryview,
    *,
    ttl: int = DEFAULT_TTL,
) -> IpPacket:
    """An IP header for `payload` (the transport header included in it). Checksums of TCP,
    UDP and ICMP payloads are computed over it; other payloads go as they are."""
    if source.version != destination.version:
        raise ImpossiblePacket(
            f"IPv{source.version} source {source} with IPv{destination.version} "
            f"destination {destination}"
        )
    check_field("protocol", protocol, 8)
    check_field("TTL", ttl, 8)
    if source.version == IPV4:
        total = _IPV4_HEADER + len(payload)
        if total > _IP_LENGTH_MAX:
            raise ImpossiblePacket(f"IPv4 packet of {total} bytes (at most {_IP_LENGTH_MAX})")
        header = _IPV4.pack(
            0x45, 0, total, 0, _DONT_FRAGMENT, ttl, protocol, 0, source.packed, destination.packed
        )
    else:
        if len(payload) > _IP_LENGTH_MAX:
            raise ImpossiblePacket(f"IPv6 payload of {len(payload)} bytes (no jumbograms)")
        header = _IPV6.pack(6 << 28, len(payload), protocol, ttl, source.packed, destination.packed)
    packet = IpPacket(bytearray(header) + payload)
    packet.recompute_checksums()
    return packet


def udp_packet(  # noqa: PLR0913 - a packet's fields are the parameters; the optional ones keyword-only
    source: IpAddress,
    destination: IpAddress,
    source_port: int,
    destination_port: int,
    payload: bytes | bytearray | memoryview = b"",
    *,
    ttl: int = DEFAULT_TTL,
) -> IpPacket:
    length = 8 + len(payload)
    check_field("UDP length", length, 16)
    header = _UDP.pack(_port("source", source_port), _port("destination", destination_port),
                       length, 0)  # fmt: skip
    return ip_packet(source, destination, UDP, header + payload, ttl=ttl)


def tcp_packet(  # noqa: PLR0913 - a packet's fields are the parameters; the optional ones keyword-only
    source: IpAddress,
    destination: IpAddress,
    source_port: int,
    destination_port: int,
    payload: bytes | bytearray | memoryview = b"",
    *,
    flags: int = TcpHeader.ACK,
    sequence: int = 0,
    acknowledgment: int = 0,
    window: int = 0xFFFF,
    options: bytes = b"",
    ttl: int = DEFAULT_TTL,
) -> IpPacket:
    """A TCP segment; `options` must be padded to a multiple of 4 bytes, at most 40."""
    if len(options) % 4 or len(options) > _TCP_OPTIONS_MAX:
        raise ImpossiblePacket(f"TCP options of {len(options)} bytes (multiple of 4, <= 40)")
    header = _TCP.pack(
        _port("source", source_port),
        _port("destination", destination_port),
        check_field("TCP sequence", sequence, 32),
        check_field("TCP acknowledgment", acknowledgment, 32),
        (20 + len(options)) << 2,  # data offset in 32-bit words, in the high nibble
        check_field("TCP flags", flags, 8),
        check_field("TCP window", window, 16),
        0,
        0,
    )
    return ip_packet(source, destination, TCP, header + options + payload, ttl=ttl)


def icmp_packet(  # noqa: PLR0913 - a packet's fields are the parameters; the optional ones keyword-only
    source: IpAddress,
    destination: IpAddress,
    icmp_type: int,
    code: int,
    *,
    rest_of_header: int = 0,
    payload: bytes | bytearray | memoryview = b"",
    ttl: int = DEFAULT_TTL,
) -> IpPacket:
    """Any ICMP (IPv4) or ICMPv6 message: type, code, the 4 bytes after the checksum as one
    integer, and its body."""
    header = _ICMP.pack(
        check_field("ICMP type", icmp_type, 8),
        check_field("ICMP code", code, 8),
        0,
        check_field("ICMP rest of header", rest_of_header, 32),
    )
    protocol = ICMP if source.version == IPV4 else ICMPV6
    return ip_packet(source, destination, protocol, header + payload, ttl=ttl)


def icmp_echo_request(  # noqa: PLR0913 - a packet's fields are the parameters; the optional ones keyword-only
    source: IpAddress,
    destination: IpAddress,
    identifier: int,
    sequence: int,
    payload: bytes | bytearray | memoryview = b"",
    *,
    ttl: int = DEFAULT_TTL,
) -> IpPacket:
    kind = ICMPV4_ECHO_REQUEST if source.version == IPV4 else ICMPV6_ECHO_REQUEST
    return _echo(source, destination, kind, (identifier, sequence), payload, ttl=ttl)


def icmp_echo_reply(  # noqa: PLR0913 - a packet's fields are the parameters; the optional ones keyword-only
    source: IpAddress,
    destination: IpAddress,
    identifier: int,
    sequence: int,
    payload: bytes | bytearray | memoryview = b"",
    *,
    ttl: int = DEFAULT_TTL,
) -> IpPacket:
    kind = ICMPV4_ECHO_REPLY if source.version == IPV4 else ICMPV6_ECHO_REPLY
    return _echo(source, destination, kind, (identifier, sequence), payload, ttl=ttl)


def _echo(  # noqa: PLR0913 - shared body of the two public echo builders
    source: IpAddress,
    destination: IpAddress,
    kind: int,
    id_and_sequence: tuple[int, int],
    payload: bytes | bytearray | memoryview,
    *,
    ttl: int,
) -> IpPacket:
    identifier, sequence = id_and_sequence
    rest = check_field("echo identifier", identifier, 16) << 16
    rest |= check_field("echo sequence", sequence, 16)
    return icmp_packet(source, destination, kind, 0, rest_of_header=rest, payload=payload, ttl=ttl)


def _port(which: str, port: int) -> int:
    return check_field(f"{which} port", port, 16)
