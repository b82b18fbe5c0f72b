"""Read-only views of one header inside a parsed packet's buffer, and the protocol numbers.

A view holds the packet's memoryview and the header's offset; every property decodes its field
from the buffer when read (nothing is copied or cached, so a view sees later rewrites).
`IpPacket` creates views only for headers it has checked to be complete, so no property reads
past the buffer. Rewrites go through `IpPacket`'s setters, which keep the checksums right.
"""

from __future__ import annotations

import socket
import struct
from ipaddress import IPv4Address, IPv6Address

IPV4 = 4
IPV6 = 6
ICMP = socket.IPPROTO_ICMP
TCP = socket.IPPROTO_TCP
UDP = socket.IPPROTO_UDP
ICMPV6 = socket.IPPROTO_ICMPV6

ICMPV4_ECHO_REPLY = 0
ICMPV4_DESTINATION_UNREACHABLE = 3
ICMPV4_ECHO_REQUEST = 8
# RFC 792/1812 error messages: unreachable, source quench, redirect, time exceeded, parameter.
ICMPV4_ERROR_TYPES = frozenset({3, 4, 5, 11, 12})
ICMPV6_DESTINATION_UNREACHABLE = 1
ICMPV6_PACKET_TOO_BIG = 2
ICMPV6_ECHO_REQUEST = 128
ICMPV6_ECHO_REPLY = 129
ICMPV6_ERROR_TYPES_BELOW = 128  # RFC 4443 2.1: types 0-127 are errors

_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")


def _u16(buf: memoryview, offset: int) -> int:
    value: int = _U16.unpack_from(buf, offset)[0]
    return value


def _u32(buf: memoryview, offset: int) -> int:
    value: int = _U32.unpack_from(buf, offset)[0]
    return value


class Ipv4Header:
    """The IPv4 header at the start of the packet (RFC 791)."""

    __slots__ = ("_buf",)
    MIN_LENGTH = 20

    def __init__(self, buf: memoryview) -> None:
        self._buf = buf

    @property
    def header_length(self) -> int:
        """Bytes, options included (IHL x 4)."""
        return (self._buf[0] & 0x0F) * 4

    @property
    def dscp(self) -> int:
        return self._buf[1] >> 2

    @property
    def ecn(self) -> int:
        return self._buf[1] & 0x03

    @property
    def total_length(self) -> int:
        return _u16(self._buf, 2)

    @property
    def identification(self) -> int:
        return _u16(self._buf, 4)

    @property
    def dont_fragment(self) -> bool:
        return bool(self._buf[6] & 0x40)

    @property
    def more_fragments(self) -> bool:
        return bool(self._buf[6] & 0x20)

    @property
    def fragment_offset(self) -> int:
        """In 8-byte units, as on the wire."""
        return _u16(self._buf, 6) & 0x1FFF

    @property
    def ttl(self) -> int:
        return self._buf[8]

    @property
    def protocol(self) -> int:
        return self._buf[9]

    @property
    def checksum(self) -> int:
        return _u16(self._buf, 10)

    @property
    def options(self) -> memoryview:
        return self._buf[self.MIN_LENGTH : self.header_length]

    @property
    def source(self) -> IPv4Address:
        return IPv4Address(_u32(self._buf, 12))

    @property
    def destination(self) -> IPv4Address:
        return IPv4Address(_u32(self._buf, 16))


class Ipv6Header:
    """The fixed IPv6 header (RFC 8200); `next_header` is the first one after it, which may be
    an extension header (`IpPacket.protocol` is the transport protocol after all of them)."""

    __slots__ = ("_buf",)
    LENGTH = 40

    def __init__(self, buf: memoryview) -> None:
        self._buf = buf

    @property
    def traffic_class(self) -> int:
        return (_u16(self._buf, 0) >> 4) & 0xFF

    @property
    def flow_label(self) -> int:
        return _u32(self._buf, 0) & 0xFFFFF

    @property
    def payload_length(self) -> int:
        return _u16(self._buf, 4)

    @property
    def next_header(self) -> int:
        return self._buf[6]

    @property
    def hop_limit(self) -> int:
        return self._buf[7]

    @property
    def source(self) -> IPv6Address:
        return IPv6Address(int.from_bytes(self._buf[8:24]))

    @property
    def destination(self) -> IPv6Address:
        return IPv6Address(int.from_bytes(self._buf[24:40]))


class _L4Header:
    __slots__ = ("_buf", "_offset")
    HEADER_LENGTH = 8

    def __init__(self, buf: memoryview, offset: int) -> None:
        self._buf = buf
        self._offset = offset

    @property
    def payload(self) -> memoryview:
        return self._buf[self._offset + self.HEADER_LENGTH :]


class _PortsHeader(_L4Header):
    """A transport header that starts with source and destination ports (UDP, TCP)."""

    __slots__ = ()

    @property
    def source_port(self) -> int:
        return _u16(self._buf, self._offset)

    @property
    def destination_port(self) -> int:
        return _u16(self._buf, self._offset + 2)


class UdpHeader(_PortsHeader):
    """UDP (RFC 768). `length` is as received: the first fragment of a datagram has more."""

    __slots__ = ()

    @property
    def length(self) -> int:
        return _u16(self._buf, self._offset + 4)

    @property
    def checksum(self) -> int:
        return _u16(self._buf, self._offset + 6)


class TcpHeader(_PortsHeader):
    """TCP (RFC 9293); `flags` is the 8-bit CWR..FIN byte."""

    __slots__ = ()
    HEADER_LENGTH = 20
    FIN, SYN, RST, PSH, ACK, URG, ECE, CWR = (1 << bit for bit in range(8))

    @property
    def sequence(self) -> int:
        return _u32(self._buf, self._offset + 4)

    @property
    def acknowledgment(self) -> int:
        return _u32(self._buf, self._offset + 8)

    @property
    def header_length(self) -> int:
        """Bytes, options included (data offset x 4)."""
        return (self._buf[self._offset + 12] >> 4) * 4

    @property
    def flags(self) -> int:
        return self._buf[self._offset + 13]

    @property
    def syn(self) -> bool:
        return bool(self.flags & self.SYN)

    @property
    def ack(self) -> bool:
        return bool(self.flags & self.ACK)

    @property
    def fin(self) -> bool:
        return bool(self.flags & self.FIN)

    @property
    def rst(self) -> bool:
        return bool(self.flags & self.RST)

    @property
    def window(self) -> int:
        return _u16(self._buf, self._offset + 14)

    @property
    def checksum(self) -> int:
        return _u16(self._buf, self._offset + 16)

    @property
    def urgent_pointer(self) -> int:
        return _u16(self._buf, self._offset + 18)

    @property
    def options(self) -> memoryview:
        return self._buf[self._offset + 20 : self._offset + self.header_length]

    @property
    def payload(self) -> memoryview:
        return self._buf[self._offset + self.header_length :]


class _IcmpHeader(_L4Header):
    __slots__ = ()
    ECHO_TYPES: frozenset[int] = frozenset()

    @property
    def type(self) -> int:
        return self._buf[self._offset]

    @property
    def code(self) -> int:
        return self._buf[self._offset + 1]

    @property
    def checksum(self) -> int:
        return _u16(self._buf, self._offset + 2)

    @property
    def is_echo(self) -> bool:
        """Echo request or reply: only these have an identifier and a sequence number."""
        return self._buf[self._offset] in self.ECHO_TYPES

    @property
    def is_error(self) -> bool:
        raise NotImplementedError

    @property
    def rest_of_header(self) -> int:
        """Bytes 4-7 as one integer (the next-hop MTU of fragmentation needed, the MTU of
        packet too big, the pointer of parameter problem, ...)."""
        return _u32(self._buf, self._offset + 4)

    @property
    def identifier(self) -> int:
        if __debug__ and not self.is_echo:
            raise AssertionError("ICMP identifier only exists for echo requests and replies")
        return _u16(self._buf, self._offset + 4)

    @property
    def sequence(self) -> int:
        if __debug__ and not self.is_echo:
            raise AssertionError("ICMP sequence only exists for echo requests and replies")
        return _u16(self._buf, self._offset + 6)


class Icmpv4Header(_IcmpHeader):
    """ICMP for IPv4 (RFC 792). `payload` of an error is the quoted packet (truncated)."""

    __slots__ = ()
    ECHO_TYPES = frozenset({ICMPV4_ECHO_REQUEST, ICMPV4_ECHO_REPLY})

    @property
    def is_error(self) -> bool:
        return self.type in ICMPV4_ERROR_TYPES


class Icmpv6Header(_IcmpHeader):
    """ICMPv6 (RFC 4443). `payload` of an error is the quoted packet (truncated)."""

    __slots__ = ()
    ECHO_TYPES = frozenset({ICMPV6_ECHO_REQUEST, ICMPV6_ECHO_REPLY})

    @property
    def is_error(self) -> bool:
        return self.type < ICMPV6_ERROR_TYPES_BELOW
