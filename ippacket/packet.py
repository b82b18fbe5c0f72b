"""`IpPacket`: one IPv4 or IPv6 packet parsed in place, read and rewritten without copying.

Parsing (the constructor) reads the IP header, walks IPv6 extension headers and checks that
the transport header it found is complete: O(number of headers), a few `struct.unpack_from`
calls on the caller's buffer and one memoryview, nothing else. Every other field is decoded
when asked for. Bytes past the IP total length (padding) are ignored. A transport header must
be complete (TCP 20 bytes + its options, UDP 8, ICMP/ICMPv6 8: every message type defined has
that much), also in a first fragment (RFC 1858's tiny fragments are malformed); other
transports (and ICMP in IPv6 / ICMPv6 in IPv4) are opaque bytes after `l4_offset`.

Errors: a packet that cannot be read raises `MalformedPacket` from the constructor, and only
from there (never IndexError or struct.error from an accessor). Setters raise
`ImpossiblePacket` for a request no packet can hold; setting an ICMP echo identifier or
sequence on an ICMP message that is not an echo is a caller bug, caught by a check that runs
unless Python runs with -O (then the bytes are written as asked).

Fragments: a non-first fragment has no transport header: `l4_offset`, ports and ICMP fields are
None, and `protocol` is the transport protocol its datagram carries. A first fragment has its
transport header (RFC 7112 requires the whole header chain in it); its transport checksum
covers the whole datagram, which incremental updates keep right.

IPv6 Routing header with segments left: the transport checksum's pseudo-header holds the final
destination from the Routing header (RFC 8200 8.1), so `set_destination` leaves it alone and
`recompute_checksums` does not touch the transport checksum. A Home Address option (RFC 6275)
is not looked for: the pseudo-header source is taken to be the IPv6 source.
"""

from __future__ import annotations

import struct
from ipaddress import IPv4Address, IPv6Address
from typing import TypeAlias

from ippacket import checksum
from ippacket.errors import ImpossiblePacket, MalformedPacket
from ippacket.headers import (
    ICMP,
    ICMPV4_ERROR_TYPES,
    ICMPV6,
    ICMPV6_ERROR_TYPES_BELOW,
    IPV4,
    IPV6,
    TCP,
    UDP,
    Icmpv4Header,
    Icmpv6Header,
    Ipv4Header,
    Ipv6Header,
    TcpHeader,
    UdpHeader,
)

IpAddress: TypeAlias = IPv4Address | IPv6Address
Buffer: TypeAlias = bytearray | memoryview

_V4_FIELDS = struct.Struct("!BxHxxHxB")  # version/IHL, total length, flags/fragment, protocol
_V6_FIELDS = struct.Struct("!4xHB")  # payload length, next header
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_IPV4_HEADER = 20
_IPV6_HEADER = 40
# Extension headers whose length is (8-bit field + 1) x 8: hop-by-hop, routing, destination
# options, mobility, HIP, shim6 (RFC 8200 4, RFC 6275, RFC 7401, RFC 5533).
_IPV6_EXTENSIONS = frozenset({0, 43, 60, 135, 139, 140})
_IPV6_ROUTING = 43  # byte 3: segments left
_IPV6_FRAGMENT = 44
_IPV6_AUTH = 51  # length is (field + 2) x 4 (RFC 4302)
_IPV6_SPECIAL = frozenset({_IPV6_FRAGMENT, _IPV6_AUTH})
_IPV6_EXTENSION_MIN = 8
# Smallest complete transport header; ICMP: type, code, checksum and the 4-byte rest, which
# every ICMP and ICMPv6 message defined has.
_TCP_MIN = 20
_UDP_HEADER = 8
_ICMP_HEADER = 8
_CHECKSUM_AT = {TCP: 16, UDP: 6}
_ICMP_CHECKSUM_AT = 2
_ICMPV4_ECHO = frozenset({0, 8})
_ICMPV6_ECHO = frozenset({128, 129})
_PORT_MAX = 0xFFFF


class IpPacket:
    """An IPv4 or IPv6 packet over a caller's buffer (a bytearray or a writable memoryview,
    e.g. a ring slot): reads decode from it and setters write into it. A read-only buffer
    (memoryview of bytes) parses and reads; setters on it raise TypeError. While the packet
    exists, a bytearray it reads cannot change size (the memoryview pins it)."""

    __slots__ = ("_buf", "_csum", "_fragment", "_l4", "_protocol", "_routed", "_version")
    _buf: memoryview
    _version: int
    _protocol: int
    _l4: int  # offset of the transport header, -1 for a non-first fragment
    _csum: int  # offset of the TCP/UDP/ICMP(v6) checksum, -1 for other transports
    _fragment: bool
    _routed: bool  # IPv6 Routing header with segments left: the destination is not final

    def __init__(self, buf: Buffer | bytes) -> None:
        view = buf if isinstance(buf, memoryview) else memoryview(buf)
        size = len(view)
        if not size:
            raise MalformedPacket("empty packet")
        version = view[0] >> 4
        if version == IPV4:
            if size < _IPV4_HEADER:
                raise MalformedPacket(f"IPv4 packet of {size} bytes, shorter than a header")
            first, total, fragment, protocol = _V4_FIELDS.unpack_from(view)
            header = (first & 0x0F) * 4
            if header < _IPV4_HEADER or header > total:
                raise MalformedPacket(f"IPv4 header length {header} (total length {total})")
            if total > size:
                raise MalformedPacket(f"IPv4 total length {total} > {size} bytes read")
            # A non-first fragment (offset != 0) carries no transport header.
            l4 = -1 if fragment & 0x1FFF else header
            is_fragment = bool(fragment & 0x3FFF)
            routed = False
        elif version == IPV6:
            if size < _IPV6_HEADER:
                raise MalformedPacket(f"IPv6 packet of {size} bytes, shorter than a header")
            payload_length, next_header = _V6_FIELDS.unpack_from(view)
            total = _IPV6_HEADER + payload_length
            if total > size:
                raise MalformedPacket(f"IPv6 payload length {payload_length} > {size - 40} read")
            protocol, l4, is_fragment, routed = _walk_ipv6_extensions(view, next_header, total)
        else:
            raise MalformedPacket(f"IP version {version}")
        if total < size:
            view = view[:total]
        csum = _check_transport_header(view, version, protocol, l4) if l4 >= 0 else -1
        self._buf = view
        self._version = version
        self._protocol = protocol
        self._l4 = l4
        self._csum = csum
        self._fragment = is_fragment
        self._routed = routed

    # --- IP layer ---------------------------------------------------------------------------

    @property
    def data(self) -> memoryview:
        """The packet's bytes (a view of the buffer, up to the IP total length)."""
        return self._buf

    def __len__(self) -> int:
        return len(self._buf)

    @property
    def version(self) -> int:
        return self._version

    @property
    def protocol(self) -> int:
        """The transport protocol: IPv4's protocol field, or IPv6's last next header after
        the extension headers (59 = no next header, 50 = ESP: opaque)."""
        return self._protocol

    @property
    def source(self) -> IpAddress:
        buf = self._buf
        if self._version == IPV4:
            return IPv4Address(_U32.unpack_from(buf, 12)[0])
        return IPv6Address(int.from_bytes(buf[8:24]))

    @property
    def destination(self) -> IpAddress:
        buf = self._buf
        if self._version == IPV4:
            return IPv4Address(_U32.unpack_from(buf, 16)[0])
        return IPv6Address(int.from_bytes(buf[24:40]))

    @property
    def is_fragment(self) -> bool:
        """Any fragment, the first one included (an IPv6 atomic fragment is not one)."""
        return self._fragment

    @property
    def is_source_routed(self) -> bool:
        """An IPv6 Routing header with segments left: the destination is not the final one."""
        return self._routed

    @property
    def l4_offset(self) -> int | None:
        """Where the transport header starts; None for a non-first fragment."""
        return self._l4 if self._l4 >= 0 else None

    @property
    def ipv4(self) -> Ipv4Header | None:
        return Ipv4Header(self._buf) if self._version == IPV4 else None

    @property
    def ipv6(self) -> Ipv6Header | None:
        return Ipv6Header(self._buf) if self._version == IPV6 else None

    # --- transport layer --------------------------------------------------------------------

    @property
    def udp(self) -> UdpHeader | None:
        return UdpHeader(self._buf, self._l4) if self._has(UDP) else None

    @property
    def tcp(self) -> TcpHeader | None:
        return TcpHeader(self._buf, self._l4) if self._has(TCP) else None

    @property
    def icmpv4(self) -> Icmpv4Header | None:
        if self._version == IPV4 and self._has(ICMP):
            return Icmpv4Header(self._buf, self._l4)
        return None

    @property
    def icmpv6(self) -> Icmpv6Header | None:
        if self._version == IPV6 and self._has(ICMPV6):
            return Icmpv6Header(self._buf, self._l4)
        return None

    @property
    def source_port(self) -> int | None:
        """TCP or UDP source port; None for other protocols and non-first fragments."""
        if self._csum >= 0 and self._protocol in _CHECKSUM_AT:
            port: int = _U16.unpack_from(self._buf, self._l4)[0]
            return port
        return None

    @property
    def destination_port(self) -> int | None:
        """TCP or UDP destination port; None for other protocols and non-first fragments."""
        if self._csum >= 0 and self._protocol in _CHECKSUM_AT:
            port: int = _U16.unpack_from(self._buf, self._l4 + 2)[0]
            return port
        return None

    @property
    def icmp_type(self) -> int | None:
        """ICMP (IPv4) or ICMPv6 type; None for other packets."""
        return self._buf[self._l4] if self._is_icmp() else None

    @property
    def icmp_code(self) -> int | None:
        return self._buf[self._l4 + 1] if self._is_icmp() else None

    @property
    def is_icmp_error(self) -> bool:
        """An ICMP or ICMPv6 error message (it quotes a packet; never answer it with one)."""
        if not self._is_icmp():
            return False
        kind = self._buf[self._l4]
        if self._version == IPV4:
            return kind in ICMPV4_ERROR_TYPES
        return kind < ICMPV6_ERROR_TYPES_BELOW

    @property
    def echo_id(self) -> int | None:
        """Identifier of an ICMP/ICMPv6 echo request or reply; None for every other packet."""
        return _U16.unpack_from(self._buf, self._l4 + 4)[0] if self._is_echo() else None

    @property
    def echo_sequence(self) -> int | None:
        return _U16.unpack_from(self._buf, self._l4 + 6)[0] if self._is_echo() else None

    # --- setters: checksums follow incrementally (RFC 1624) -------------------------------------

    def set_source(self, address: IpAddress) -> None:
        self._set_address(12 if self._version == IPV4 else 8, address, True)

    def set_destination(self, address: IpAddress) -> None:
        # Behind a Routing header with segments left, the pseudo-header has another address.
        self._set_address(16 if self._version == IPV4 else 24, address, not self._routed)

    def set_source_port(self, port: int) -> None:
        self._set_l4_u16(0, port, self._port_checksum_at("source port"))

    def set_destination_port(self, port: int) -> None:
        self._set_l4_u16(2, port, self._port_checksum_at("destination port"))

    def set_echo_id(self, identifier: int) -> None:
        self._set_l4_u16(4, identifier, self._echo_checksum_at("identifier"))

    def set_echo_sequence(self, sequence: int) -> None:
        self._set_l4_u16(6, sequence, self._echo_checksum_at("sequence"))

    def recompute_checksums(self) -> None:
        """Compute the IPv4 header and the TCP/UDP/ICMP checksums from scratch (for built
        packets; rewrites update them incrementally). A fragment's transport checksum covers
        the whole datagram, so it is left alone."""
        buf = self._buf
        if self._version == IPV4:
            header = (buf[0] & 0x0F) * 4
            _U16.pack_into(buf, 10, 0)
            _U16.pack_into(buf, 10, checksum.internet_checksum(buf[:header]))
        at = self._csum
        if self._fragment or self._routed or at < 0:
            return
        l4 = self._l4
        _U16.pack_into(buf, at, 0)
        total = checksum.ones_sum(buf[l4:])
        if self._protocol != ICMP:  # ICMPv4 alone has no pseudo-header
            total += self._pseudo_header_sum(len(buf) - l4)
        value = checksum.finish(total)
        if self._protocol == UDP and value == 0:
            value = 0xFFFF  # RFC 768: a computed 0 is sent as all ones
        _U16.pack_into(buf, at, value)

    def __repr__(self) -> str:
        src, dst = self.source, self.destination
        if (ports := self.source_port) is not None:
            return f"IpPacket({self._protocol} {src}:{ports} -> {dst}:{self.destination_port})"
        if (kind := self.icmp_type) is not None:
            return f"IpPacket(icmp {src} -> {dst} type {kind} code {self.icmp_code})"
        return f"IpPacket({self._protocol} {src} -> {dst}, {len(self)} bytes)"

    # --- internals ----------------------------------------------------------------------------

    def _has(self, protocol: int) -> bool:
        return self._protocol == protocol and self._csum >= 0

    def _is_icmp(self) -> bool:
        """ICMP in IPv4 or ICMPv6 in IPv6 (the only other transports given a checksum)."""
        return self._csum >= 0 and self._protocol not in _CHECKSUM_AT

    def _is_echo(self) -> bool:
        if not self._is_icmp():
            return False
        echo = _ICMPV4_ECHO if self._version == IPV4 else _ICMPV6_ECHO
        return self._buf[self._l4] in echo

    def _pseudo_header_sum(self, length: int) -> int:
        buf = self._buf
        if self._version == IPV4:
            src, dst = _U32.unpack_from(buf, 12)[0], _U32.unpack_from(buf, 16)[0]
        else:
            src, dst = int.from_bytes(buf[8:24]), int.from_bytes(buf[24:40])
        return checksum.pseudo_header_sum(src, dst, self._protocol, length)

    def _set_address(self, offset: int, address: IpAddress, in_pseudo_header: bool) -> None:
        buf = self._buf
        new = int(address)
        if self._version == IPV4:
            if not isinstance(address, IPv4Address):
                raise ImpossiblePacket(f"IPv6 address in an IPv4 packet ({address})")
            old: int = _U32.unpack_from(buf, offset)[0]
            _U32.pack_into(buf, offset, new)
            checksum.update_field(buf, 10, old, new, False)
        else:
            if not isinstance(address, IPv6Address):
                raise ImpossiblePacket(f"IPv4 address in an IPv6 packet ({address})")
            old = int.from_bytes(buf[offset : offset + 16])
            buf[offset : offset + 16] = new.to_bytes(16)
        # TCP, UDP and ICMPv6 checksums cover a pseudo-header with the addresses; ICMPv4's not
        # (protocol 1 has a checksum offset only in IPv4).
        if in_pseudo_header and self._csum >= 0 and self._protocol != ICMP:
            checksum.update_field(buf, self._csum, old, new, self._protocol == UDP)

    def _port_checksum_at(self, field: str) -> int:
        if self._csum < 0 or self._protocol not in _CHECKSUM_AT:
            raise ImpossiblePacket(f"{field} in a packet without ports ({self!r})")
        return self._csum

    def _echo_checksum_at(self, field: str) -> int:
        if not self._is_icmp():
            raise ImpossiblePacket(f"echo {field} in a packet that is not ICMP ({self!r})")
        if __debug__ and not self._is_echo():
            raise AssertionError(f"ICMP {field} only exists for echo requests and replies")
        return self._csum

    def _set_l4_u16(self, at: int, value: int, checksum_at: int) -> None:
        if not 0 <= value <= _PORT_MAX:
            raise ImpossiblePacket(f"{value} does not fit in 16 bits")
        buf = self._buf
        offset = self._l4 + at
        old: int = _U16.unpack_from(buf, offset)[0]
        _U16.pack_into(buf, offset, value)
        protocol = self._protocol
        # ICMPv4 (only IPv4 gives protocol 1 a checksum) has no pseudo-header: it can be all zero.
        message = self._l4 if protocol == ICMP else -1
        checksum.update_field(buf, checksum_at, old, value, protocol == UDP, message=message)


def _walk_ipv6_extensions(
    view: memoryview, next_header: int, end: int
) -> tuple[int, int, bool, bool]:
    """(transport protocol, its offset or -1 for a non-first fragment, is a fragment, has a
    Routing header with segments left). Terminates: every extension header is at least 8
    bytes and must fit before `end`."""
    offset = _IPV6_HEADER
    fragment = routed = False
    while True:
        if next_header not in _IPV6_EXTENSIONS and next_header not in _IPV6_SPECIAL:
            return next_header, offset, fragment, routed
        if offset + _IPV6_EXTENSION_MIN > end:
            raise MalformedPacket(f"IPv6 extension header {next_header} at {offset} truncated")
        if next_header == _IPV6_FRAGMENT:
            length = _IPV6_EXTENSION_MIN
            field = _U16.unpack_from(view, offset + 2)[0]
            fragment = bool(field & 0xFFF9)  # offset or M set: not an atomic fragment
            if field & 0xFFF8:  # non-first fragment: the rest is payload
                return view[offset], -1, True, routed
        elif next_header == _IPV6_AUTH:
            length = (view[offset + 1] + 2) * 4
        else:
            length = (view[offset + 1] + 1) * 8
            routed = routed or (next_header == _IPV6_ROUTING and view[offset + 3] != 0)
        if offset + length > end:
            raise MalformedPacket(f"IPv6 extension header {next_header} at {offset} truncated")
        next_header = view[offset]
        offset += length


def _check_transport_header(view: memoryview, version: int, protocol: int, l4: int) -> int:
    """Offset of the transport checksum after checking that the TCP, UDP or ICMP header is
    complete; -1 for other transports (their bytes are opaque)."""
    room = len(view) - l4
    if protocol == TCP:
        header = (view[l4 + 12] >> 4) * 4 if room >= _TCP_MIN else 0
        if header < _TCP_MIN or header > room:
            raise MalformedPacket(f"TCP header of {header} bytes in {room} bytes")
        return l4 + _CHECKSUM_AT[TCP]
    if protocol == UDP:
        if room < _UDP_HEADER:
            raise MalformedPacket(f"UDP header in {room} bytes")
        return l4 + _CHECKSUM_AT[UDP]
    if protocol == (ICMP if version == IPV4 else ICMPV6):
        if room < _ICMP_HEADER:
            raise MalformedPacket(f"ICMP header in {room} bytes")
        return l4 + _ICMP_CHECKSUM_AT
    return -1
