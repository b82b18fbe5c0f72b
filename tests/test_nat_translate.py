"""RFC 7915 translation (gateway/nat/translate.py): header rules, every ICMP mapping row,
checksums checked by scapy (an independent decoder that recomputes them), round trips and
everything that must be refused."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, UDPerror
from scapy.layers.inet6 import (
    ICMPv6EchoReply,
    ICMPv6EchoRequest,
    ICMPv6TimeExceeded,
    IPerror6,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.layers.ipsec import AH
from scapy.packet import Packet, Raw

from gateway.nat import icmp_map
from gateway.nat.translate import Reason, Untranslatable, ipv4_to_ipv6, ipv6_to_ipv4
from ippacket import IpPacket
from tests.ippacket_reference import recomputed

GATEWAY4, REAL4 = IPv4Address("192.0.2.1"), IPv4Address("198.51.100.2")
ROUTER4 = IPv4Address("203.0.113.7")
PEER6, PROXY6 = IPv6Address("fd00:2021:1111::1"), IPv6Address("fd00:2021:1111:8000::5")


def parsed(packet: Packet | bytes) -> IpPacket:
    return IpPacket(bytearray(bytes(packet)))


def checked(data: bytearray) -> bytes:
    """`data` after scapy confirms every checksum in it (outer IP and transport)."""
    assert recomputed(bytes(data)) == bytes(data)
    return bytes(data)


def to_v6(packet: Packet | bytes) -> IPv6:
    """A reply from the real host translated for the peer (REAL4 -> GATEWAY4 becomes
    PROXY6 -> PEER6)."""
    return IPv6(checked(ipv4_to_ipv6(parsed(packet), PROXY6, PEER6)))


def to_v4(packet: Packet | bytes) -> IP:
    """A peer's packet translated for the real host (PEER6 -> PROXY6 becomes
    GATEWAY4 -> REAL4)."""
    return IP(checked(ipv6_to_ipv4(parsed(packet), GATEWAY4, REAL4)))


def reply4(transport: Packet, **ip: object) -> Packet:
    return IP(src=str(REAL4), dst=str(GATEWAY4), flags="DF", id=0, **ip) / transport


def request6(transport: Packet, **ip: object) -> Packet:
    return IPv6(src=str(PEER6), dst=str(PROXY6), **ip) / transport


def refused(reason: Reason, translate: object) -> Untranslatable:
    assert callable(translate)
    with pytest.raises(Untranslatable) as caught:
        translate()
    assert caught.value.reason is reason, caught.value
    return caught.value


# --- IP header rules (RFC 7915 4.1, 5.1) ------------------------------------------------------


def test_ipv4_header_becomes_ipv6_header() -> None:
    v4 = reply4(TCP(sport=443, dport=40000, flags="SA", seq=7) / b"data", tos=0xB9, ttl=33)
    v6 = to_v6(v4)
    assert (v6.src, v6.dst) == (str(PROXY6), str(PEER6))
    assert (v6.tc, v6.fl, v6.hlim, v6.nh, v6.plen) == (0xB9, 0, 33, 6, len(v4) - 20)
    assert bytes(v6[TCP].payload) == b"data" and (v6[TCP].sport, v6[TCP].seq) == (443, 7)


def test_ipv6_header_becomes_an_atomic_ipv4_header() -> None:
    v6 = request6(UDP(sport=5353, dport=53) / b"query", tc=0x2E, fl=0xABCDE, hlim=9)
    v4 = to_v4(v6)
    assert (v4.src, v4.dst, v4.tos, v4.ttl, v4.proto) == (str(GATEWAY4), str(REAL4), 0x2E, 9, 17)
    assert (v4.flags, v4.id, v4.frag, v4.ihl, v4.len) == ("DF", 0, 0, 5, 20 + 8 + 5)
    assert bytes(v4[UDP].payload) == b"query"


def test_skipped_ipv6_extension_headers_leave_length_and_protocol_to_the_transport() -> None:
    v6 = request6(
        IPv6ExtHdrHopByHop()
        / IPv6ExtHdrDestOpt()
        / IPv6ExtHdrRouting(segleft=0)
        / TCP(sport=1, dport=2)
        / b"x"
    )
    v4 = to_v4(v6)
    assert (v4.proto, v4.len, bytes(v4[TCP].payload)) == (6, 20 + 20 + 1, b"x")


def test_ipv4_options_are_dropped() -> None:
    v4 = IP(src=str(REAL4), dst=str(GATEWAY4), options=b"\x01\x01\x01\x00") / UDP() / b"hi"
    v6 = to_v6(v4)
    assert (v6.plen, bytes(v6[UDP].payload)) == (10, b"hi")


def test_ipv4_without_df_is_translated_whole_never_fragmented() -> None:
    # RFC 7915 4 would fragment it; here the caller keeps packets within the path MTU.
    v4 = IP(src=str(REAL4), dst=str(GATEWAY4), flags=0) / UDP() / (b"d" * 1472)
    v6 = to_v6(v4)
    assert (v6.nh, v6.plen, len(v6)) == (17, 1480, 1520)


def test_expired_ipv4_source_route_is_dropped_like_any_option() -> None:
    # Loose source route, length 7, pointer 8 > length: every hop visited.
    v4 = IP(src=str(REAL4), dst=str(GATEWAY4), options=b"\x83\x07\x08\x0a\x00\x00\x01\x00") / UDP()
    assert to_v6(v4).plen == 8


# --- transport checksums --------------------------------------------------------------------


def test_udp_without_checksum_gets_one_in_ipv6() -> None:
    v6 = to_v6(reply4(UDP(sport=53, dport=5353, chksum=0) / b"answer"))
    assert v6[UDP].chksum != 0  # and `checked` confirmed it is the right one


def test_ipv6_udp_zero_checksum_stays_zero_in_ipv4() -> None:
    # RFC 6935 tunnels may send 0 over IPv6; IPv4's 0 means "none", which stays true.
    assert to_v4(request6(UDP(sport=1, dport=2, chksum=0) / b"t"))[UDP].chksum == 0


def test_echo_request_and_reply_types_and_checksums() -> None:
    v6 = to_v6(reply4(ICMP(type=0, id=77, seq=3) / b"ping"))
    assert isinstance(v6.payload, ICMPv6EchoReply)
    assert (v6.payload.id, v6.payload.seq, v6.plen) == (77, 3, 12)
    v4 = to_v4(request6(ICMPv6EchoRequest(id=9, seq=1) / b"pong"))
    assert (v4[ICMP].type, v4[ICMP].code, v4[ICMP].id, v4[ICMP].seq) == (8, 0, 9, 1)


# --- round trips ----------------------------------------------------------------------------

TRANSPORTS = [
    TCP(sport=443, dport=1234, flags="PA", seq=1, ack=2, options=[("MSS", 1360)]) / (b"t" * 100),
    UDP(sport=53, dport=5353) / (b"u" * 33),
    ICMP(type=8, id=1, seq=2) / (b"e" * 56),
    ICMP(type=0, id=1, seq=2) / (b"e" * 7),
]
TRANSPORT_IDS = ["tcp", "udp", "echo-request", "echo-reply"]


@pytest.mark.parametrize("transport", TRANSPORTS, ids=TRANSPORT_IDS)
def test_ipv4_to_ipv6_to_ipv4_gives_the_original(transport: Packet) -> None:
    original = bytes(reply4(transport, tos=0x10, ttl=50))
    there = checked(ipv4_to_ipv6(parsed(original), PROXY6, PEER6))
    back = checked(ipv6_to_ipv4(parsed(there), REAL4, GATEWAY4))
    assert back == original


@pytest.mark.parametrize("transport", TRANSPORTS, ids=TRANSPORT_IDS)
def test_ipv6_to_ipv4_to_ipv6_gives_the_original(transport: Packet) -> None:
    if isinstance(transport, ICMP):  # the ICMPv6 echo of the same id, sequence and data
        echo = ICMPv6EchoRequest if transport.type == 8 else ICMPv6EchoReply
        transport = echo(id=transport.id, seq=transport.seq) / transport.payload
    original = bytes(request6(transport, tc=0x10, hlim=50))
    there = checked(ipv6_to_ipv4(parsed(original), GATEWAY4, REAL4))
    back = checked(ipv4_to_ipv6(parsed(there), PEER6, PROXY6))
    assert back == original


# --- ICMP type/code mapping: every row of RFC 7915 4.2 and 5.2 ---------------------------------

# (ICMPv4 type, code) -> (ICMPv6 type, code), restated from RFC 7915 4.2. Rest-of-header rules
# (MTU, pointer) have tests of their own.
V4_TO_V6_ROWS = {
    (3, 0): (1, 0),  # net unreachable -> no route
    (3, 1): (1, 0),  # host unreachable
    (3, 2): (4, 1),  # protocol unreachable -> parameter problem, unrecognized next header
    (3, 3): (1, 4),  # port unreachable
    (3, 4): (2, 0),  # fragmentation needed -> packet too big
    (3, 5): (1, 0),  # source route failed
    (3, 6): (1, 0),
    (3, 7): (1, 0),
    (3, 8): (1, 0),
    (3, 9): (1, 1),  # network administratively prohibited -> administratively prohibited
    (3, 10): (1, 1),
    (3, 11): (1, 0),
    (3, 12): (1, 0),
    (3, 13): (1, 1),  # communication administratively prohibited
    (3, 15): (1, 1),  # precedence cutoff
    (11, 0): (3, 0),  # time exceeded, code unchanged
    (11, 1): (3, 1),
    (12, 0): (4, 0),  # parameter problem (pointer) -> erroneous header field
    (12, 2): (4, 0),  # bad length
}
# Dropped silently: host precedence violation (3/14), missing option (12/1), and the
# obsolete or single-hop types: source quench, redirect, alternative host address, router
# advertisement/solicitation, timestamp, information and address mask request/reply.
V4_DROPPED = [(3, 14), (12, 1), (4, 0), (5, 0), (6, 0), (9, 0), (10, 0), (13, 0), (14, 0),
              (15, 0), (16, 0), (17, 0), (18, 0)]  # fmt: skip
V6_TO_V4_ROWS = {
    (1, 0): (3, 1),  # no route -> host unreachable
    (1, 1): (3, 10),  # administratively prohibited -> host administratively prohibited
    (1, 2): (3, 1),  # beyond scope of source address
    (1, 3): (3, 1),  # address unreachable
    (1, 4): (3, 3),  # port unreachable
    (2, 0): (3, 4),  # packet too big -> fragmentation needed
    (3, 0): (11, 0),  # time exceeded, code unchanged
    (3, 1): (11, 1),
    (4, 0): (12, 0),  # erroneous header field -> parameter problem (pointer)
    (4, 1): (3, 2),  # unrecognized next header -> protocol unreachable
}
# Dropped: other unreachable codes (5 policy, 6 reject route), unrecognized option (4/2),
# MLD (130-132), neighbour discovery and redirect (133-137), unknown informational types.
V6_DROPPED = [(1, 5), (1, 6), (4, 2), (130, 0), (131, 0), (132, 0), (133, 0), (134, 0),
              (135, 0), (136, 0), (137, 0), (200, 0)]  # fmt: skip
# Parameter problem pointers: RFC 7915 Figure 3 (IPv4 -> IPv6) and Figure 6 (IPv6 -> IPv4).
V4_POINTERS = {0: 0, 1: 1, 2: 4, 3: 4, 8: 7, 9: 6, 12: 8, 13: 8, 14: 8, 15: 8,
               16: 24, 17: 24, 18: 24, 19: 24}  # fmt: skip
V6_POINTERS = {0: 0, 1: 1, 4: 2, 5: 2, 6: 9, 7: 8, **dict.fromkeys(range(8, 24), 12),
               **dict.fromkeys(range(24, 40), 16)}  # fmt: skip


def test_icmpv4_mapping_has_exactly_the_rfc_rows() -> None:
    for kind in range(256):
        for code in range(256):
            mapped = icmp_map.icmpv4_to_icmpv6(kind, code, 0, 1500)
            if kind in (0, 8):
                assert mapped == ({8: 128, 0: 129}[kind], code, 0)
            elif kind == 11:  # time exceeded keeps any code
                assert mapped == (3, code, 0)
            elif (kind, code) in V4_TO_V6_ROWS:
                assert mapped is not None and mapped[:2] == V4_TO_V6_ROWS[kind, code]
            else:
                assert mapped is None, (kind, code)


def test_icmpv6_mapping_has_exactly_the_rfc_rows() -> None:
    for kind in range(256):
        for code in range(256):
            mapped = icmp_map.icmpv6_to_icmpv4(kind, code, 24)  # a pointer that maps
            if kind in (128, 129):
                assert mapped == ({128: 8, 129: 0}[kind], code, 24)
            elif kind == 2:  # packet too big: RFC 4443 defines code 0, receivers ignore it
                assert mapped == (3, 4, 68)
            elif kind == 3:
                assert mapped == (11, code, 0)
            elif (kind, code) in V6_TO_V4_ROWS:
                assert mapped is not None and mapped[:2] == V6_TO_V4_ROWS[kind, code]
            else:
                assert mapped is None, (kind, code)


def test_parameter_problem_pointers() -> None:
    for pointer in range(256):
        mapped = icmp_map.icmpv4_to_icmpv6(12, 0, pointer << 24, 0)
        expected = V4_POINTERS.get(pointer)
        assert mapped == (None if expected is None else (4, 0, expected)), pointer
    for pointer in [*range(300), 0xFFFF_FFFF]:
        mapped = icmp_map.icmpv6_to_icmpv4(4, 0, pointer)
        expected = V6_POINTERS.get(pointer)
        assert mapped == (None if expected is None else (12, 0, expected << 24)), pointer
    assert icmp_map.icmpv4_to_icmpv6(3, 2, 0, 0) == (4, 1, 6)  # points at the next header


@pytest.mark.parametrize(("v4_mtu", "quoted_length", "v6_mtu"), [
    (1400, 1500, 1420),  # + 20 for the longer header
    (1260, 1500, 1280),
    (576, 1500, 1280),  # never below IPv6's minimum MTU
    (0, 1500, 1492 + 20),  # MTU 0: the largest RFC 1191 plateau below the quoted length
    (0, 9000, 8166 + 20),
])  # fmt: skip
def test_fragmentation_needed_mtu(v4_mtu: int, quoted_length: int, v6_mtu: int) -> None:
    assert icmp_map.icmpv4_to_icmpv6(3, 4, v4_mtu, quoted_length) == (2, 0, v6_mtu)


@pytest.mark.parametrize(("v6_mtu", "v4_mtu"), [(1280, 1260), (1500, 1480), (9000, 8980),
                                               (2**32 - 1, 0xFFFF), (40, 68)])  # fmt: skip
def test_packet_too_big_mtu(v6_mtu: int, v4_mtu: int) -> None:
    assert icmp_map.icmpv6_to_icmpv4(2, 0, v6_mtu) == (3, 4, v4_mtu)


# --- ICMP errors end to end: the quoted packet translated too ----------------------------------

QUOTED_UDP4 = IP(src=str(GATEWAY4), dst=str(REAL4), flags="DF", id=0, ttl=1) / UDP(
    sport=40000, dport=53
) / (b"q" * 30)  # fmt: skip
QUOTED_UDP6 = IPv6(src=str(PROXY6), dst=str(PEER6), hlim=1) / UDP(sport=53, dport=40000) / (
    b"q" * 30
)  # fmt: skip


def icmpv4_error(kind: int, code: int, rest: int = 0, quote: bytes | None = None) -> bytes:
    """An ICMPv4 error from a router to the gateway about QUOTED_UDP4 (or `quote`)."""
    quote = bytes(QUOTED_UDP4) if quote is None else quote
    body = bytes([kind, code, 0, 0]) + rest.to_bytes(4) + quote
    return recomputed(bytes(IP(src=str(ROUTER4), dst=str(GATEWAY4), ttl=60, proto=1) / body))


def icmpv6_error(kind: int, code: int, rest: int = 0, quote: bytes | None = None) -> bytes:
    """An ICMPv6 error from the peer about QUOTED_UDP6, a reply it got (or about `quote`)."""
    quote = bytes(QUOTED_UDP6) if quote is None else quote
    body = bytes([kind, code, 0, 0]) + rest.to_bytes(4) + quote
    return recomputed(bytes(IPv6(src=str(PEER6), dst=str(PROXY6), hlim=60, nh=58) / body))


@pytest.mark.parametrize(("row", "expected"), sorted(V4_TO_V6_ROWS.items()))
def test_every_icmpv4_error_row_end_to_end(row: tuple[int, int], expected: tuple[int, int]) -> None:
    rest = (9 << 24) if row[0] == 12 else 1400 if row == (3, 4) else 0
    v6 = IPv6(checked(ipv4_to_ipv6(parsed(icmpv4_error(*row, rest)), PROXY6, PEER6)))
    message = v6.payload
    assert (message.type, message.code) == expected
    assert (v6.src, v6.dst, v6.hlim, v6.nh) == (str(PROXY6), str(PEER6), 60, 58)
    if row == (3, 4):
        assert message.mtu == 1420
    if row[0] == 12:
        assert message.ptr == 6  # IPv4 protocol byte -> IPv6 next header byte
    quoted = message[IPerror6]
    # The quoted packet is the one the peer sent, as the peer sent it: to the proxy address.
    assert (quoted.src, quoted.dst, quoted.nh, quoted.hlim) == (str(PEER6), str(PROXY6), 17, 1)
    assert quoted.plen == 8 + 30
    inner = bytes(quoted)
    assert recomputed(inner) == inner  # the whole packet was quoted: its checksum must hold


@pytest.mark.parametrize(("row", "expected"), sorted(V6_TO_V4_ROWS.items()))
def test_every_icmpv6_error_row_end_to_end(row: tuple[int, int], expected: tuple[int, int]) -> None:
    rest = 24 if row == (4, 0) else 1500 if row == (2, 0) else 0
    error = parsed(icmpv6_error(*row, rest))
    v4 = IP(checked(ipv6_to_ipv4(error, GATEWAY4, REAL4)))
    assert (v4[ICMP].type, v4[ICMP].code) == expected
    assert (v4.src, v4.dst, v4.ttl, v4.flags) == (str(GATEWAY4), str(REAL4), 60, "DF")
    if row == (2, 0):
        assert v4[ICMP].nexthopmtu == 1480
    if row == (4, 0):
        assert v4[ICMP].ptr == 16  # IPv6 destination address -> IPv4 destination address
    quoted = v4[IPerror]
    assert (quoted.src, quoted.dst, quoted.proto, quoted.ttl) == (str(REAL4), str(GATEWAY4), 17, 1)
    assert (quoted.len, quoted.flags, quoted[UDPerror].dport) == (20 + 8 + 30, "DF", 40000)
    inner = bytes(quoted)
    assert recomputed(inner) == inner


def test_quoted_packet_cut_short_keeps_its_original_lengths() -> None:
    # RFC 792's minimum quote: the IP header and 8 bytes. Lengths still describe the original.
    v6 = IPv6(checked(ipv4_to_ipv6(parsed(icmpv4_error(11, 0, quote=bytes(QUOTED_UDP4)[:28])),
                                   PROXY6, PEER6)))  # fmt: skip
    quoted = v6[IPerror6]
    assert (quoted.plen, len(bytes(quoted))) == (38, 48)


def test_quoted_addresses_can_be_given() -> None:
    other = (IPv6Address("2001:db8::a"), IPv6Address("2001:db8::b"))
    out = ipv4_to_ipv6(parsed(icmpv4_error(3, 3)), PROXY6, PEER6, quoted=other)
    quoted = IPv6(checked(out))[IPerror6]
    assert (quoted.src, quoted.dst) == tuple(map(str, other))


def test_icmpv6_error_is_cut_to_1280_bytes() -> None:
    big = bytes(IP(src=str(GATEWAY4), dst=str(REAL4)) / UDP() / (b"z" * 1400))
    out = ipv4_to_ipv6(parsed(icmpv4_error(3, 4, 1400, quote=big[: 548 + 700])), PROXY6, PEER6)
    assert len(checked(out)) == 1280


def test_icmp_extensions_are_dropped() -> None:
    # RFC 4884: length 7 words (28 bytes) of quote, then an extension structure.
    rest = 7 << 16  # byte 5 of the header
    quote = bytes(QUOTED_UDP4)[:28] + b"\x20\x00\x00\x00" + b"X" * 8
    v6 = IPv6(checked(ipv4_to_ipv6(parsed(icmpv4_error(11, 0, rest, quote)), PROXY6, PEER6)))
    assert isinstance(v6.payload, ICMPv6TimeExceeded) and v6.payload.length == 0
    assert len(bytes(v6[IPerror6])) == 48  # the 28 quoted bytes, translated; no extension


def test_refused_icmp_errors_are_silent() -> None:
    bad = bytearray(bytes(icmpv4_error(3, 1)))
    bad[22] ^= 0xFF  # the ICMP checksum
    error = refused(Reason.ICMP_ERROR, lambda: ipv4_to_ipv6(IpPacket(bad), PROXY6, PEER6))
    assert error.silent
    nested = icmpv4_error(11, 0, quote=icmpv4_error(3, 1))
    assert refused(Reason.ICMP_ERROR, lambda: ipv4_to_ipv6(parsed(nested), PROXY6, PEER6)).silent
    cut = icmpv4_error(3, 1, quote=bytes(QUOTED_UDP4)[:24])  # the transport header cut
    refused(Reason.ICMP_ERROR, lambda: ipv4_to_ipv6(parsed(cut), PROXY6, PEER6))
    refused(Reason.ICMP_TYPE, lambda: ipv4_to_ipv6(parsed(icmpv4_error(5, 0)), PROXY6, PEER6))
    error6 = parsed(icmpv6_error(1, 4, quote=icmpv6_error(1, 4)))
    refused(Reason.ICMP_ERROR, lambda: ipv6_to_ipv4(error6, REAL4, GATEWAY4))


@pytest.mark.parametrize("row", V4_DROPPED)
def test_icmpv4_without_counterpart_is_dropped_silently(row: tuple[int, int]) -> None:
    packet = parsed(icmpv4_error(*row))
    assert refused(Reason.ICMP_TYPE, lambda: ipv4_to_ipv6(packet, PROXY6, PEER6)).silent


@pytest.mark.parametrize("row", V6_DROPPED)
def test_icmpv6_without_counterpart_is_dropped_silently(row: tuple[int, int]) -> None:
    packet = parsed(icmpv6_error(*row))
    assert refused(Reason.ICMP_TYPE, lambda: ipv6_to_ipv4(packet, REAL4, GATEWAY4)).silent


# --- what is refused --------------------------------------------------------------------------


def test_fragments_are_refused() -> None:
    first = IP(src=str(REAL4), dst=str(GATEWAY4), flags="MF") / UDP() / (b"a" * 16)
    later = IP(src=str(REAL4), dst=str(GATEWAY4), frag=3, proto=17) / (b"a" * 16)
    v6_fragment = request6(IPv6ExtHdrFragment(m=1) / UDP() / (b"a" * 16))
    atomic = request6(IPv6ExtHdrFragment() / UDP() / b"a")
    for packet in (first, later):
        refused(Reason.FRAGMENT, lambda p=packet: ipv4_to_ipv6(parsed(p), PROXY6, PEER6))
    for packet in (v6_fragment, atomic):
        refused(Reason.FRAGMENT, lambda p=packet: ipv6_to_ipv4(parsed(p), GATEWAY4, REAL4))


def test_source_routes_are_refused() -> None:
    routed = request6(IPv6ExtHdrRouting(segleft=1, addresses=["2001:db8::9"]) / UDP())
    error = refused(Reason.SOURCE_ROUTE, lambda: ipv6_to_ipv4(parsed(routed), GATEWAY4, REAL4))
    assert not error.silent
    lsrr = b"\x83\x07\x04\x0a\x00\x00\x01\x00"  # pointer 4: no hop visited yet
    v4 = IP(src=str(REAL4), dst=str(GATEWAY4), options=lsrr) / UDP()
    refused(Reason.SOURCE_ROUTE, lambda: ipv4_to_ipv6(parsed(v4), PROXY6, PEER6))


def test_other_protocols_and_extension_headers_are_refused() -> None:
    gre4 = IP(src=str(REAL4), dst=str(GATEWAY4), proto=47) / b"gre!"
    refused(Reason.PROTOCOL, lambda: ipv4_to_ipv6(parsed(gre4), PROXY6, PEER6))
    gre6 = request6(Raw(b"gre!"), nh=47)
    refused(Reason.PROTOCOL, lambda: ipv6_to_ipv4(parsed(gre6), GATEWAY4, REAL4))
    ah = request6(AH(nh=17, payloadlen=4, icv=b"\x00" * 12) / UDP())
    refused(Reason.EXTENSION_HEADER, lambda: ipv6_to_ipv4(parsed(ah), GATEWAY4, REAL4))


def test_malformed_fields_ippacket_does_not_check_are_refused() -> None:
    bad_option = IP(src=str(REAL4), dst=str(GATEWAY4), options=b"\x44\x09\x05\x00") / UDP()
    refused(Reason.MALFORMED, lambda: ipv4_to_ipv6(parsed(bad_option), PROXY6, PEER6))
    bad_udp_length = reply4(UDP(len=200) / b"short")
    refused(Reason.MALFORMED, lambda: ipv4_to_ipv6(parsed(bad_udp_length), PROXY6, PEER6))


def test_ipv4_result_over_65535_bytes_is_refused() -> None:
    # An IPv6 payload of 65535 bytes (the most there is) needs a 65555-byte IPv4 packet.
    jumbo = request6(UDP(sport=1, dport=2) / (b"j" * (65535 - 8)))
    refused(Reason.TOO_BIG, lambda: ipv6_to_ipv4(parsed(jumbo), GATEWAY4, REAL4))


def test_wrong_family_is_a_caller_bug() -> None:
    with pytest.raises(ValueError, match="ipv4_to_ipv6"):
        ipv4_to_ipv6(parsed(request6(UDP())), PROXY6, PEER6)
    with pytest.raises(ValueError, match="ipv6_to_ipv4"):
        ipv6_to_ipv4(parsed(request6(UDP())), PROXY6, PEER6)  # type: ignore[arg-type]  # the bug under test


def test_all_zero_icmpv4_message_gets_checksum_0xffff() -> None:
    # Found by hypothesis: echo reply, id 0, sequence 0, no data. Its ICMPv4 words sum to 0,
    # so the only valid checksum is 0xFFFF; an incremental update from ICMPv6 gave 0x0000.
    v4 = to_v4(request6(ICMPv6EchoReply(id=0, seq=0)))
    assert v4[ICMP].chksum == 0xFFFF


def test_quoted_echo_is_translated_with_its_checksum() -> None:
    # Time exceeded for a ping: the quoted echo request changes type and pseudo-header too.
    ping4 = bytes(IP(src=str(GATEWAY4), dst=str(REAL4), flags="DF", id=0, ttl=1)
                  / ICMP(type=8, id=5, seq=6) / b"abcdefgh")  # fmt: skip
    v6 = IPv6(checked(ipv4_to_ipv6(parsed(icmpv4_error(11, 0, quote=ping4)), PROXY6, PEER6)))
    inner6 = bytes(v6[IPerror6])
    assert recomputed(inner6) == inner6
    assert inner6 == checked(ipv4_to_ipv6(parsed(ping4), PEER6, PROXY6))
    ping6 = bytes(IPv6(src=str(PROXY6), dst=str(PEER6), hlim=1) / ICMPv6EchoReply(id=5, seq=6))
    v4 = IP(checked(ipv6_to_ipv4(parsed(icmpv6_error(3, 0, quote=ping6)), GATEWAY4, REAL4)))
    inner4 = bytes(v4[IPerror])
    assert recomputed(inner4) == inner4
    assert inner4 == checked(ipv6_to_ipv4(parsed(ping6), REAL4, GATEWAY4))
