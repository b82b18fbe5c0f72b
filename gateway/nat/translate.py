"""Stateless IPv4/IPv6 header translation (SIIT, RFC 7915) of one packet: pure functions.

`ipv4_to_ipv6(packet, source, destination)` and `ipv6_to_ipv4(...)` take a parsed `IpPacket`
and the addresses the translated packet carries (the NAT table chose them) and return the
translated packet as a new bytearray. No I/O, no clock, no state; the input is not modified.

Header rules (RFC 7915 4.1 / 5.1):

* Traffic class <-> type of service, all 8 bits (DSCP and ECN); flow label 0.
* Hop limit <-> TTL copied as they are. A router decrements it; for the gateway the kernel
  does when it forwards the translated packet out of the TUN device, so the caller decrements
  (and answers time exceeded) only where it acts as the router itself.
* IPv4 out: no options, DF set, identification 0: an atomic datagram (RFC 6864), as RFC 6145
  5.1 and connlib did. RFC 7915 5.1 instead wants DF clear at 1260 bytes or less and an
  identification generator, which a stateless per-packet function cannot keep; DF set means an
  IPv4 path below 1260 bytes answers with fragmentation needed, translated to packet too big.
* IPv4 options are dropped, except that an unexpired source route refuses the packet.
* IPv6 hop-by-hop, destination options and routing headers with segments left 0 are skipped;
  the length and protocol follow the skip.

Checksums: TCP, UDP and ICMP echo checksums are updated incrementally (RFC 1624) for the new
pseudo-header (old addresses out, new in; the length and protocol are the same in both
families) and, for ICMP, the changed type and the pseudo-header ICMPv6 has and ICMPv4 lacks:
O(1), the payload is only copied. Two exceptions: a UDP-over-IPv4 checksum of 0 (none) gets a
full checksum, mandatory in IPv6 (RFC 7915 4.5); an IPv6 UDP checksum of 0 stays 0 in IPv4.
ICMP errors are rebuilt (type, code, the quoted packet translated) and checksummed in full,
after checking the received checksum (recomputing would otherwise launder a corrupt one).

ICMP errors (RFC 7915 4.2-4.3, 5.2-5.3): type/code per `icmp_map`; the quoted packet is
translated by the same header rules, once (a quoted ICMP error is refused), with TCP/UDP/echo
checksums updated incrementally when the quote holds them. Its addresses default to the
outer ones swapped (the quoted packet went from the error's destination to its source), which
holds when the error is re-originated from the address the peer sent to; `quoted=` overrides.
An ICMPv6 error is cut to 1280 bytes (RFC 4443 2.4(c)); RFC 4884 extensions are dropped.

Refused with `Untranslatable` (one exception, a ValueError with a `reason` for counting):
fragments either way (no reassembly here; connlib did not translate them either), IPv6
extension headers other than the three above (AH, mobility, HIP, shim6), a routing header
with segments left or an unexpired IPv4 source route, transports other than TCP, UDP and
ICMP (their checksums or semantics the translator cannot vouch for), malformed IPv4 options
or UDP length, a result over 65535 bytes, ICMP types/codes without a mapping and ICMP errors
whose checksum or quoted packet is bad. For those last two (`silent`) RFC 7915 says to drop
without an answer; for the others the caller may answer with ICMP destination unreachable.
IPv4 packets are never fragmented: keeping a translated packet within the IPv6 path MTU is the
caller's job (RFC 7915 4 would fragment one without DF).

A packet of the wrong family or addresses of the wrong family are caller bugs: ValueError.
"""

from __future__ import annotations

import enum
import struct
from ipaddress import IPv4Address, IPv6Address

from gateway.nat import icmp_map
from ippacket import IpPacket, checksum
from ippacket.headers import ICMP, ICMPV4_ERROR_TYPES, ICMPV6, TCP, UDP

_V4 = struct.Struct("!BBHHHBBH4s4s")
_V4_START = struct.Struct("!BBHHHBB")  # version/IHL, TOS, total length, id, flags, TTL, protocol
_V6 = struct.Struct("!IHBB16s16s")
_V6_START = struct.Struct("!IHBB")  # version/class/flow, payload length, next header, hop limit
_ICMP = struct.Struct("!BBHI")
_U16 = struct.Struct("!H")
_IPV4_HEADER = 20
_IPV6_HEADER = 40
_ICMP_HEADER = 8
_TRANSPORT_QUOTED_MIN = 8  # RFC 792: an error quotes at least 8 bytes past the IP header
_IP_LENGTH_MAX = 0xFFFF
_IPV6_ERROR_MAX = 1280  # RFC 4443 2.4(c)
_DONT_FRAGMENT = 0x4000
_FRAGMENT_BITS = 0x3FFF  # MF and the fragment offset
_CHECKSUM_AT = {TCP: 16, UDP: 6, ICMP: 2, ICMPV6: 2}
# IPv6 headers skipped (RFC 7915 5.1): hop-by-hop, destination options, routing.
_IPV6_SKIPPED = frozenset({0, 60, 43})
_IPV6_ROUTING = 43
_IPV6_FRAGMENT = 44
_IPV6_REFUSED = frozenset({51, 135, 139, 140})  # AH, mobility, HIP, shim6
# IPv4 options: end of list, no-operation, loose and strict source route (RFC 791).
_OPTION_END, _OPTION_NOP = 0, 1
_SOURCE_ROUTES = frozenset({131, 137})
# Errors with an RFC 4884 length (in 4-byte words at byte 5 / 8-byte words at byte 4).
_V4_EXTENSIBLE = frozenset({3, 11, 12})
_V6_EXTENSIBLE = frozenset({1, 3})


class Reason(enum.StrEnum):
    """Why a packet was not translated (a metric label)."""

    FRAGMENT = "fragment"
    EXTENSION_HEADER = "extension_header"
    SOURCE_ROUTE = "source_route"
    PROTOCOL = "protocol"
    MALFORMED = "malformed"
    TOO_BIG = "too_big"
    ICMP_TYPE = "icmp_type"
    ICMP_ERROR = "icmp_error"


_SILENT = frozenset({Reason.ICMP_TYPE, Reason.ICMP_ERROR})


class Untranslatable(ValueError):
    """The packet cannot be translated; `reason` says why, the message gives the details."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason

    @property
    def silent(self) -> bool:
        """RFC 7915 says to drop it without an ICMP answer (an ICMP error or a message type
        with no counterpart); otherwise the caller may answer destination unreachable,
        unless the packet itself is an ICMP error (RFC 1122 3.2.2: never answered with one,
        which ippacket's error builders refuse anyway)."""
        return self.reason in _SILENT


def ipv4_to_ipv6(
    packet: IpPacket,
    source: IPv6Address,
    destination: IPv6Address,
    *,
    quoted: tuple[IPv6Address, IPv6Address] | None = None,
) -> bytearray:
    """`packet` (IPv4) as an IPv6 packet from `source` to `destination`; `quoted` is the
    (source, destination) of the packet an ICMP error quotes (default: the outer two swapped)."""
    if packet.version != 4 or source.version != 6 or destination.version != 6:  # noqa: PLR2004 - IP versions
        raise ValueError(f"ipv4_to_ipv6 of {packet!r} to {source}, {destination}")
    if packet.is_fragment:
        raise Untranslatable(Reason.FRAGMENT, "IPv4 fragment")
    data = packet.data
    header = (data[0] & 0x0F) * 4
    if header > _IPV4_HEADER:
        _check_ipv4_options(data[_IPV4_HEADER:header])
    if packet.protocol == ICMP and packet.icmp_type in ICMPV4_ERROR_TYPES:
        inner = quoted or (destination, source)
        return _icmpv4_error(data, header, int(source), int(destination), inner)
    out = _v4_to_v6(data, int(source), int(destination), quote=False)
    if out[6] == UDP and _U16.unpack_from(out, _IPV6_HEADER + 6)[0] == 0:
        _udp_checksum_afresh(out)
    return out


def ipv6_to_ipv4(
    packet: IpPacket,
    source: IPv4Address,
    destination: IPv4Address,
    *,
    quoted: tuple[IPv4Address, IPv4Address] | None = None,
) -> bytearray:
    """`packet` (IPv6) as an IPv4 packet from `source` to `destination`; `quoted` as above."""
    if packet.version != 6 or source.version != 4 or destination.version != 4:  # noqa: PLR2004 - IP versions
        raise ValueError(f"ipv6_to_ipv4 of {packet!r} to {source}, {destination}")
    if packet.is_icmp_error:
        inner = quoted or (destination, source)
        return _icmpv6_error(packet.data, int(source), int(destination), inner)
    return _v6_to_v4(packet.data, int(source), int(destination), quote=False)


# --- one header each way (the packet itself, or the one an ICMP error quotes) ---------------


def _v4_to_v6(data: memoryview, source: int, destination: int, *, quote: bool) -> bytearray:
    """Header and transport translation; `quote`: `data` is a quoted, maybe cut, packet whose
    lengths come from its header."""
    first, tos, total, _, flags, ttl, protocol = _V4_START.unpack_from(data)
    header = (first & 0x0F) * 4
    if flags & _FRAGMENT_BITS:
        raise Untranslatable(Reason.FRAGMENT, "IPv4 fragment")
    if protocol not in (TCP, UDP, ICMP):
        raise Untranslatable(Reason.PROTOCOL, f"IPv4 protocol {protocol}")
    body = data[header:total]  # a quote may be cut short, never longer than its packet
    payload_length = total - header
    if len(body) < _TRANSPORT_QUOTED_MIN:
        raise Untranslatable(Reason.MALFORMED, f"{len(body)} transport bytes, {total} total")
    next_header = ICMPV6 if protocol == ICMP else protocol
    out = bytearray(_IPV6_HEADER + len(body))
    _V6.pack_into(
        out,
        0,
        0x6000_0000 | tos << 20,
        payload_length,
        next_header,
        ttl,
        source.to_bytes(16),
        destination.to_bytes(16),
    )
    out[_IPV6_HEADER:] = body
    old_pseudo = int.from_bytes(data[12:20])  # both addresses: equal to their sum mod 0xFFFF
    new_pseudo = source + destination
    if protocol == ICMP:
        kind, code = body[0], body[1]
        mapped = icmp_map.V4_ECHO_TO_V6.get(kind)
        if mapped is None:
            raise Untranslatable(Reason.ICMP_TYPE, f"ICMPv4 type {kind} code {code}")
        out[_IPV6_HEADER] = mapped
        old_pseudo = kind << 8
        new_pseudo = (mapped << 8) + new_pseudo + ICMPV6 + payload_length
    elif protocol == UDP:
        _check_udp_length(body, payload_length)
    _update_checksum(out, _IPV6_HEADER, protocol, old_pseudo, new_pseudo)
    return out


def _v6_to_v4(data: memoryview, source: int, destination: int, *, quote: bool) -> bytearray:
    first, payload_length, next_header, hop_limit = _V6_START.unpack_from(data)
    protocol, l4 = _skip_extension_headers(data, next_header, check_route=not quote)
    if protocol not in (TCP, UDP, ICMPV6):
        raise Untranslatable(Reason.PROTOCOL, f"IPv6 next header {protocol}")
    body = data[l4 : _IPV6_HEADER + payload_length]
    transport_length = payload_length - (l4 - _IPV6_HEADER)
    if len(body) < _TRANSPORT_QUOTED_MIN:
        raise Untranslatable(Reason.MALFORMED, f"{len(body)} transport bytes of {payload_length}")
    total = _IPV4_HEADER + transport_length
    if total > _IP_LENGTH_MAX:
        raise Untranslatable(Reason.TOO_BIG, f"IPv4 packet of {total} bytes")
    protocol4 = ICMP if protocol == ICMPV6 else protocol
    out = bytearray(_IPV4_HEADER + len(body))
    _V4.pack_into(
        out,
        0,
        0x45,
        (first >> 20) & 0xFF,
        total,
        0,
        _DONT_FRAGMENT,
        hop_limit,
        protocol4,
        0,
        source.to_bytes(4),
        destination.to_bytes(4),
    )
    _U16.pack_into(out, 10, checksum.internet_checksum(out[:_IPV4_HEADER]))
    out[_IPV4_HEADER:] = body
    old_pseudo = int.from_bytes(data[8:40])
    new_pseudo = source + destination
    if protocol == ICMPV6:
        kind, code = body[0], body[1]
        mapped = icmp_map.V6_ECHO_TO_V4.get(kind)
        if mapped is None:
            raise Untranslatable(Reason.ICMP_TYPE, f"ICMPv6 type {kind} code {code}")
        out[_IPV4_HEADER] = mapped
        old_pseudo = (kind << 8) + old_pseudo + ICMPV6 + transport_length
        new_pseudo = mapped << 8
    elif protocol == UDP:
        _check_udp_length(body, transport_length)
    _update_checksum(out, _IPV4_HEADER, protocol, old_pseudo, new_pseudo)
    if protocol4 == ICMP and not any(out[_IPV4_HEADER:]):
        # An all-zero ICMPv4 message (echo reply, id and sequence 0, no data) sums to 0,
        # whose checksum is 0xFFFF (RFC 1071); an RFC 1624 update never gives that value.
        _U16.pack_into(out, _IPV4_HEADER + 2, 0xFFFF)
    return out


def _update_checksum(out: bytearray, l4: int, protocol: int, old: int, new: int) -> None:
    """RFC 1624 update of the transport checksum, when the (maybe cut) packet holds it."""
    at = l4 + _CHECKSUM_AT[protocol]
    if at + 2 > len(out):
        return
    current = _U16.unpack_from(out, at)[0]
    if protocol == UDP:
        if current == 0:  # none computed; ipv4_to_ipv6 computes one for IPv6
            return
        _U16.pack_into(out, at, checksum.update(current, old, new) or 0xFFFF)
        return
    _U16.pack_into(out, at, checksum.update(current, old, new))


def _udp_checksum_afresh(out: bytearray) -> None:
    """RFC 7915 4.5: IPv6 requires the UDP checksum an IPv4 sender may leave 0."""
    at = _IPV6_HEADER + 6
    pseudo = int.from_bytes(out[8:24]) + int.from_bytes(out[24:40])
    length = len(out) - _IPV6_HEADER
    total = checksum.ones_sum(out[_IPV6_HEADER:]) + pseudo + UDP + length
    _U16.pack_into(out, at, checksum.finish(total) or 0xFFFF)


def _check_udp_length(body: memoryview, payload_length: int) -> None:
    # The pseudo-header carries the UDP length; a datagram that disagrees would come out with
    # a checksum no receiver accepts.
    length = _U16.unpack_from(body, 4)[0]
    if length != payload_length:
        raise Untranslatable(Reason.MALFORMED, f"UDP length {length} in {payload_length} bytes")


def _skip_extension_headers(
    data: memoryview, next_header: int, *, check_route: bool
) -> tuple[int, int]:
    """(transport protocol, its offset) past the skipped extension headers."""
    offset = _IPV6_HEADER
    end = len(data)
    while next_header in _IPV6_SKIPPED:
        if offset + 8 > end:
            raise Untranslatable(Reason.MALFORMED, f"IPv6 extension header {next_header} cut")
        if check_route and next_header == _IPV6_ROUTING and data[offset + 3]:
            raise Untranslatable(Reason.SOURCE_ROUTE, "IPv6 routing header with segments left")
        next_header = data[offset]
        offset += (data[offset + 1] + 1) * 8
    if next_header == _IPV6_FRAGMENT:
        raise Untranslatable(Reason.FRAGMENT, "IPv6 fragment header")
    if next_header in _IPV6_REFUSED:
        raise Untranslatable(Reason.EXTENSION_HEADER, f"IPv6 extension header {next_header}")
    if offset > end:
        raise Untranslatable(Reason.MALFORMED, "IPv6 extension headers cut")
    return next_header, offset


def _check_ipv4_options(options: memoryview) -> None:
    """RFC 7915 4.1: options are dropped, but an unexpired source route refuses the packet."""
    at = 0
    while at < len(options):
        kind = options[at]
        if kind == _OPTION_END:
            return
        if kind == _OPTION_NOP:
            at += 1
            continue
        length = options[at + 1] if at + 1 < len(options) else 0
        if length < 2 or at + length > len(options):  # noqa: PLR2004 - type and length bytes
            raise Untranslatable(Reason.MALFORMED, f"IPv4 option {kind} of length {length}")
        pointer = options[at + 2] if length > 2 else 0  # noqa: PLR2004 - a pointer after them
        if kind in _SOURCE_ROUTES and pointer <= length:
            raise Untranslatable(Reason.SOURCE_ROUTE, f"unexpired IPv4 source route {kind}")
        at += length


# --- ICMP errors ---------------------------------------------------------------------------


def _icmpv4_error(
    data: memoryview,
    header: int,
    source: int,
    destination: int,
    quoted: tuple[IPv6Address, IPv6Address],
) -> bytearray:
    message = data[header:]
    if checksum.internet_checksum(message):
        raise Untranslatable(Reason.ICMP_ERROR, "ICMPv4 error with a bad checksum")
    kind, code, _, rest = _ICMP.unpack_from(message)
    quote = message[_ICMP_HEADER:]
    if kind in _V4_EXTENSIBLE and (words := message[5]):
        quote = quote[: words * 4]  # RFC 4884: the quote, then extensions (dropped)
    # The quoted IPv4 total length (bytes 2-3), for an MTU of 0.
    quoted_length = _U16.unpack_from(quote, 2)[0] if len(quote) >= 4 else 0  # noqa: PLR2004 - see above
    mapped = icmp_map.icmpv4_to_icmpv6(kind, code, rest, quoted_length)
    if mapped is None:
        raise Untranslatable(Reason.ICMP_TYPE, f"ICMPv4 type {kind} code {code}")
    inner = _quoted(quote, 4, int(quoted[0]), int(quoted[1]))
    inner = inner[: _IPV6_ERROR_MAX - _IPV6_HEADER - _ICMP_HEADER]
    out = bytearray(_IPV6_HEADER + _ICMP_HEADER + len(inner))
    _, tos, _, _, _, ttl, _ = _V4_START.unpack_from(data)
    length = len(out) - _IPV6_HEADER
    _V6.pack_into(
        out, 0, 0x6000_0000 | tos << 20, length, ICMPV6, ttl,
        source.to_bytes(16), destination.to_bytes(16),
    )  # fmt: skip
    _ICMP.pack_into(out, _IPV6_HEADER, *mapped[:2], 0, mapped[2])
    out[_IPV6_HEADER + _ICMP_HEADER :] = inner
    total = checksum.ones_sum(out[_IPV6_HEADER:]) + source + destination + ICMPV6 + length
    _U16.pack_into(out, _IPV6_HEADER + 2, checksum.finish(total))
    return out


def _icmpv6_error(
    data: memoryview,
    source: int,
    destination: int,
    quoted: tuple[IPv4Address, IPv4Address],
) -> bytearray:
    first, _, next_header, hop_limit = _V6_START.unpack_from(data)
    _, l4 = _skip_extension_headers(data, next_header, check_route=True)
    message = data[l4:]
    pseudo = int.from_bytes(data[8:40]) + ICMPV6 + len(message)
    if checksum.finish(checksum.ones_sum(message) + pseudo):
        raise Untranslatable(Reason.ICMP_ERROR, "ICMPv6 error with a bad checksum")
    kind, code, _, rest = _ICMP.unpack_from(message)
    quote = message[_ICMP_HEADER:]
    if kind in _V6_EXTENSIBLE and (words := message[4]):
        quote = quote[: words * 8]  # RFC 4884: the quote, then extensions (dropped)
    mapped = icmp_map.icmpv6_to_icmpv4(kind, code, rest)
    if mapped is None:
        raise Untranslatable(Reason.ICMP_TYPE, f"ICMPv6 type {kind} code {code}")
    inner = _quoted(quote, 6, int(quoted[0]), int(quoted[1]))
    out = bytearray(_IPV4_HEADER + _ICMP_HEADER + len(inner))
    _V4.pack_into(
        out, 0, 0x45, (first >> 20) & 0xFF, len(out), 0, _DONT_FRAGMENT, hop_limit, ICMP, 0,
        source.to_bytes(4), destination.to_bytes(4),
    )  # fmt: skip
    _U16.pack_into(out, 10, checksum.internet_checksum(out[:_IPV4_HEADER]))
    _ICMP.pack_into(out, _IPV4_HEADER, *mapped[:2], 0, mapped[2])
    out[_IPV4_HEADER + _ICMP_HEADER :] = inner
    _U16.pack_into(out, _IPV4_HEADER + 2, checksum.internet_checksum(out[_IPV4_HEADER:]))
    return out


def _quoted(quote: memoryview, version: int, source: int, destination: int) -> bytearray:
    """The packet an ICMP error quotes, translated; any failure makes the error silent."""
    minimum = _IPV4_HEADER if version == 4 else _IPV6_HEADER  # noqa: PLR2004 - IP version
    try:
        if len(quote) < minimum or quote[0] >> 4 != version:
            raise Untranslatable(
                Reason.MALFORMED, f"{len(quote)} bytes, not an IPv{version} header"
            )
        if version == 4:  # noqa: PLR2004 - IP version
            header = (quote[0] & 0x0F) * 4
            if header < _IPV4_HEADER or header > len(quote):
                raise Untranslatable(Reason.MALFORMED, f"IPv4 header of {header} bytes")
            return _v4_to_v6(quote, source, destination, quote=True)
        translated = _v6_to_v4(quote, source, destination, quote=True)
    except Untranslatable as error:
        raise Untranslatable(Reason.ICMP_ERROR, f"quoted packet: {error}") from error
    return translated
