"""ippacket unit tests: each field, setter, builder and error, on packets scapy builds."""

from __future__ import annotations

import subprocess
import sys
from ipaddress import IPv4Address, IPv6Address

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror
from scapy.layers.inet6 import (
    ICMPv6DestUnreach,
    ICMPv6PacketTooBig,
    IPerror6,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)

from ippacket import ImpossiblePacket, IpPacket, MalformedPacket, build, checksum
from ippacket.icmp_errors import Unreachable, destination_unreachable, packet_too_big
from tests.ippacket_reference import recomputed

A4, B4 = IPv4Address("192.0.2.1"), IPv4Address("198.51.100.2")
A6, B6 = IPv6Address("2001:db8::1"), IPv6Address("2001:db8::2")


def v4_tcp() -> bytearray:
    return bytearray(
        bytes(
            IP(src=str(A4), dst=str(B4), ttl=33, id=77, flags="DF", tos=0xB9)
            / TCP(
                sport=1234,
                dport=443,
                seq=10,
                ack=20,
                flags="SA",
                window=999,
                options=[("MSS", 1360)],
            )
            / b"payload"
        )
    )


def v6_udp_with_extensions() -> bytearray:
    return bytearray(
        bytes(
            IPv6(src=str(A6), dst=str(B6), hlim=9, tc=0x2E, fl=0xABCDE)
            / IPv6ExtHdrHopByHop()
            / IPv6ExtHdrDestOpt()
            / UDP(sport=5353, dport=53)
            / b"query"
        )
    )


# --- checksum -------------------------------------------------------------------------------


def test_internet_checksum_of_the_rfc_1071_example() -> None:
    # RFC 1071 3: the words 0001 f203 f4f5 f6f7 sum to ddf2; the checksum is its complement.
    assert checksum.internet_checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0x220D
    assert checksum.internet_checksum(b"\x01") == 0xFEFF  # odd length: padded with zero


def test_incremental_update_is_rfc_1624_equation_3() -> None:
    # RFC 1624 4: equation 3 gives 0x0000 where equation 2 gave the wrong 0xFFFF.
    assert checksum.update(0xDD2F, 0x5555, 0x3285) == 0x0000


def test_udp_checksum_field_update_never_writes_zero_and_keeps_none() -> None:
    # 0xFFFF - 0x1234 + 0x1234 - 0 folds to 0: the updated sum is all ones, checksum 0.
    for udp, expected in ((False, 0x0000), (True, 0xFFFF)):
        field = bytearray((0x1234).to_bytes(2))
        checksum.update_field(memoryview(field), 0, 0, 0x1234, udp)
        assert int.from_bytes(field) == expected
    none = bytearray(2)  # UDP checksum 0: none computed, nothing to update
    checksum.update_field(memoryview(none), 0, 0, 0x1234, True)
    assert none == bytearray(2)


# --- parsing --------------------------------------------------------------------------------


def test_ipv4_tcp_fields() -> None:
    packet = IpPacket(v4_tcp())
    assert (packet.version, packet.protocol, packet.source, packet.destination) == (4, 6, A4, B4)
    assert (packet.source_port, packet.destination_port) == (1234, 443)
    assert packet.icmp_type is None and packet.echo_id is None and not packet.is_icmp_error
    assert packet.ipv6 is None and packet.udp is None and packet.icmpv4 is None
    ip, tcp = packet.ipv4, packet.tcp
    assert ip is not None and tcp is not None
    assert (ip.ttl, ip.identification, ip.dont_fragment, ip.more_fragments) == (33, 77, True, False)
    assert (ip.dscp, ip.ecn, ip.header_length, ip.total_length) == (0xB9 >> 2, 1, 20, len(packet))
    assert ip.checksum == IP(bytes(packet.data)).chksum
    assert (tcp.sequence, tcp.acknowledgment, tcp.window, tcp.header_length) == (10, 20, 999, 24)
    assert tcp.syn and tcp.ack and not tcp.fin and not tcp.rst
    assert bytes(tcp.options) == b"\x02\x04\x05\x50" and bytes(tcp.payload) == b"payload"
    assert packet.l4_offset == 20 and not packet.is_fragment


def test_ipv6_walks_extension_headers_to_udp() -> None:
    packet = IpPacket(v6_udp_with_extensions())
    assert (packet.version, packet.protocol, packet.l4_offset) == (6, 17, 56)
    assert (packet.source, packet.destination) == (A6, B6)
    ip, udp = packet.ipv6, packet.udp
    assert ip is not None and udp is not None
    assert (ip.next_header, ip.hop_limit, ip.traffic_class, ip.flow_label) == (0, 9, 0x2E, 0xABCDE)
    assert (udp.source_port, udp.destination_port, udp.length) == (5353, 53, 13)
    assert bytes(udp.payload) == b"query"


def test_ipv6_walks_an_authentication_header() -> None:
    # AH's length field counts 4-byte words minus 2 (RFC 4302), unlike other extensions.
    ah = bytes([17, 4, 0, 0]) + bytes(20)  # next header UDP, (4 + 2) x 4 = 24 bytes
    udp = bytes(UDP(sport=7, dport=9))
    data = bytes(IPv6(src=str(A6), dst=str(B6), nh=51, plen=len(ah) + len(udp))) + ah + udp
    packet = IpPacket(bytearray(data))
    assert (packet.protocol, packet.l4_offset, packet.destination_port) == (17, 64, 9)


def test_icmp_echo_fields_v4_and_v6() -> None:
    v4 = IpPacket(build.icmp_echo_request(A4, B4, 7, 8, b"x").data)
    v6 = IpPacket(build.icmp_echo_reply(A6, B6, 9, 10).data)
    assert (v4.icmp_type, v4.icmp_code, v4.echo_id, v4.echo_sequence) == (8, 0, 7, 8)
    assert (v6.icmp_type, v6.icmp_code, v6.echo_id, v6.echo_sequence) == (129, 0, 9, 10)
    icmp = v6.icmpv6
    assert icmp is not None and icmp.is_echo and not icmp.is_error and icmp.identifier == 9
    assert v4.icmpv6 is None and v6.icmpv4 is None


def test_non_first_fragments_have_no_transport_header() -> None:
    v4 = bytearray(bytes(IP(src=str(A4), dst=str(B4), flags="MF", frag=5) / UDP() / b"xxxxxx"))
    v6 = bytearray(
        bytes(IPv6(src=str(A6), dst=str(B6)) / IPv6ExtHdrFragment(offset=5, nh=6) / (b"x" * 30))
    )
    for data, protocol in ((v4, 17), (v6, 6)):
        packet = IpPacket(data)
        assert packet.is_fragment and packet.l4_offset is None and packet.protocol == protocol
        assert packet.source_port is None and packet.udp is None and packet.tcp is None
        with pytest.raises(ImpossiblePacket, match="without ports"):
            packet.set_destination_port(80)
    packet = IpPacket(v4)
    packet.set_destination(IPv4Address("10.9.8.7"))  # the header checksum still follows
    assert bytes(v4) == recomputed(bytes(v4))


def test_first_fragment_keeps_its_transport_header() -> None:
    data = bytes(IPv6(src=str(A6), dst=str(B6)) / IPv6ExtHdrFragment(m=1) / UDP(dport=9))
    packet = IpPacket(bytearray(data))
    assert packet.is_fragment and packet.destination_port == 9
    atomic = bytes(IPv6(src=str(A6), dst=str(B6)) / IPv6ExtHdrFragment(m=0) / UDP(dport=9))
    assert not IpPacket(bytearray(atomic)).is_fragment  # RFC 6946


def test_bytes_past_the_total_length_are_not_part_of_the_packet() -> None:
    data = v4_tcp()
    length = len(data)
    packet = IpPacket(data + b"\0" * 10)
    assert len(packet) == length and bytes(packet.data) == bytes(data)


def test_parses_a_ring_slot_in_place() -> None:
    slot = bytearray(2048)
    packet_bytes = v4_tcp()
    slot[100 : 100 + len(packet_bytes)] = packet_bytes
    packet = IpPacket(memoryview(slot)[100 : 100 + len(packet_bytes)])
    packet.set_destination_port(8443)
    assert slot[100 + 22 : 100 + 24] == (8443).to_bytes(2)  # written into the slot itself


def test_read_only_buffers_parse_but_cannot_be_rewritten() -> None:
    packet = IpPacket(bytes(v4_tcp()))
    assert packet.destination_port == 443
    with pytest.raises(TypeError):
        packet.set_destination_port(1)


def _set(data: bytearray, offset: int, value: int) -> bytearray:
    data[offset] = value
    return data


MALFORMED = {
    "empty": bytearray(),
    "version 5": bytearray(b"\x50" + bytes(39)),
    "short IPv4 header": v4_tcp()[:19],
    "IHL 4": _set(v4_tcp(), 0, 0x44),
    "total length past the buffer": v4_tcp()[:-1],
    "total length below the IHL": _set(_set(v4_tcp(), 2, 0), 3, 16),
    "short IPv6 header": v6_udp_with_extensions()[:39],
    "IPv6 payload past the buffer": v6_udp_with_extensions()[:-1],
    "extension header past the end": _set(v6_udp_with_extensions(), 41, 200),
    "TCP data offset 4": _set(v4_tcp(), 32, 0x40),
    "TCP data offset past the end": _set(v4_tcp(), 32, 0xF0),
    "UDP header cut": bytearray(bytes(IP(proto=17) / b"1234567")),
    "ICMP header cut": bytearray(bytes(IP(proto=1) / b"\x08\x00\x00\x00")),
    "IPv6 ICMP header cut": bytearray(bytes(IPv6(nh=58) / b"\x80\x00\x00\x00")),
}


@pytest.mark.parametrize("name", MALFORMED)
def test_malformed_packets_raise_malformed_packet(name: str) -> None:
    with pytest.raises(MalformedPacket):
        IpPacket(MALFORMED[name])


# --- setters --------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [v4_tcp, v6_udp_with_extensions])
def test_address_and_port_setters_keep_checksums_valid(make: object) -> None:
    assert callable(make)
    data = make()
    packet = IpPacket(data)
    new_dst = IPv4Address("203.0.113.9") if packet.version == 4 else IPv6Address("fd00::9")
    packet.set_destination(new_dst)
    packet.set_destination_port(8080)
    packet.set_source_port(1)
    assert (packet.destination, packet.destination_port, packet.source_port) == (new_dst, 8080, 1)
    assert bytes(data) == recomputed(bytes(data))


def test_rewrite_updates_checksums_without_re_summing_the_payload() -> None:
    """With a payload byte changed behind the checksum's back, a rewrite must carry the
    error along (incremental), not absorb it (re-sum); restoring the byte makes it valid."""
    for data in (v4_tcp(), v6_udp_with_extensions()):
        packet = IpPacket(data)
        data[-1] ^= 0xFF
        new = IPv4Address("10.0.0.1") if packet.version == 4 else IPv6Address("fd00::1")
        packet.set_source(new)
        packet.set_source_port(999)
        data[-1] ^= 0xFF
        assert bytes(data) == recomputed(bytes(data))


def test_destination_rewrite_behind_a_routing_header_keeps_the_transport_checksum() -> None:
    """With segments left, the pseudo-header holds the Routing header's final destination
    (RFC 8200 8.1), so the IPv6 destination is not part of the transport checksum."""
    for segments_left in (0, 1):
        data = bytearray(
            bytes(
                IPv6(src=str(A6), dst=str(B6))
                / IPv6ExtHdrRouting(addresses=["2001:db8::99"], segleft=segments_left)
                / UDP(sport=1, dport=2)
                / b"data"
            )
        )
        packet = IpPacket(data)
        packet.set_destination(IPv6Address("2001:db8::77"))
        packet.set_source(IPv6Address("2001:db8::66"))
        assert bytes(data) == recomputed(bytes(data)), segments_left


def test_udp_checksum_zero_stays_zero() -> None:
    data = bytearray(bytes(IP(src=str(A4), dst=str(B4)) / UDP(sport=1, dport=2, chksum=0)))
    packet = IpPacket(data)
    packet.set_destination(IPv4Address("10.1.2.3"))
    packet.set_destination_port(53)
    udp = packet.udp
    assert udp is not None and udp.checksum == 0
    assert bytes(data) == recomputed(bytes(data))  # the IPv4 header checksum did change


def test_icmpv4_checksum_ignores_addresses_and_icmpv6_follows_them() -> None:
    v4 = build.icmp_echo_request(A4, B4, 1, 2)
    v6 = build.icmp_echo_request(A6, B6, 1, 2)
    before = v4.icmpv4.checksum if v4.icmpv4 else None
    v4.set_source(IPv4Address("10.0.0.9"))
    v6.set_source(IPv6Address("fd00::9"))
    assert (v4.icmpv4.checksum if v4.icmpv4 else None) == before
    for packet in (v4, v6):
        packet.set_echo_id(0xBEEF)
        packet.set_echo_sequence(0xFFFF)
        assert (packet.echo_id, packet.echo_sequence) == (0xBEEF, 0xFFFF)
        assert bytes(packet.data) == recomputed(bytes(packet.data))


def test_icmpv4_echo_rewritten_to_all_zero_data_gets_checksum_0xffff() -> None:
    """An echo reply with identifier, sequence and payload all zero sums to 0: RFC 1071 gives
    0xFFFF (0x0000 would make the packet invalid), and an incremental update must agree."""
    rewritten = build.icmp_echo_reply(A4, B4, 5, 0, bytes(8))
    rewritten.set_echo_id(0)
    unchanged = build.icmp_echo_reply(A4, B4, 0, 0)  # built with 0xFFFF; a no-op rewrite
    unchanged.set_echo_sequence(0)
    for packet in (rewritten, unchanged):
        assert packet.icmpv4 is not None and packet.icmpv4.checksum == 0xFFFF
        assert bytes(packet.data) == recomputed(bytes(packet.data))
    rewritten.set_echo_id(0xFFFF)  # not all zero, the sum is 0xFFFF: checksum 0
    assert rewritten.icmpv4 is not None and rewritten.icmpv4.checksum == 0
    assert bytes(rewritten.data) == recomputed(bytes(rewritten.data))


def test_setters_refuse_impossible_values() -> None:
    packet = IpPacket(v4_tcp())
    with pytest.raises(ImpossiblePacket, match="IPv6 address in an IPv4 packet"):
        packet.set_source(A6)
    with pytest.raises(ImpossiblePacket, match="16 bits"):
        packet.set_source_port(65536)
    with pytest.raises(ImpossiblePacket, match="not ICMP"):
        packet.set_echo_id(1)
    echo = build.icmp_echo_request(A4, B4, 1, 2)
    with pytest.raises(ImpossiblePacket, match="without ports"):
        echo.set_source_port(1)


def test_echo_id_on_a_non_echo_icmp_message_is_a_debug_assertion() -> None:
    error = destination_unreachable(IpPacket(v4_tcp()), Unreachable.PORT)
    with pytest.raises(AssertionError, match="only exists for echo"):
        error.set_echo_id(5)
    with pytest.raises(AssertionError, match="only exists for echo"):
        error.set_echo_sequence(5)
    icmp = error.icmpv4
    assert icmp is not None
    with pytest.raises(AssertionError, match="only exists for echo"):
        icmp.identifier  # noqa: B018 - reading is the test


def test_echo_id_check_is_debug_only() -> None:
    """Under python -O the check is gone (no cost in production): the bytes are written."""
    code = (
        "from ipaddress import IPv4Address as A\n"
        "from ippacket import build\n"
        "from ippacket.icmp_errors import Unreachable, destination_unreachable\n"
        "p = build.udp_packet(A('192.0.2.1'), A('192.0.2.2'), 1, 2)\n"
        "e = destination_unreachable(p, Unreachable.PORT)\n"
        "e.set_echo_id(0x1234)\n"
        "print(bytes(e.data[24:26]).hex())\n"
    )
    out = subprocess.run(
        [sys.executable, "-O", "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "1234"


# --- builders -------------------------------------------------------------------------------


def test_builders_refuse_impossible_packets() -> None:
    with pytest.raises(ImpossiblePacket, match=r"IPv4 source .* IPv6 destination"):
        build.udp_packet(A4, B6, 1, 2)
    with pytest.raises(ImpossiblePacket, match="IPv4 packet of 65536 bytes"):
        build.ip_packet(A4, B4, 17, bytes(65516))
    with pytest.raises(ImpossiblePacket, match="IPv6 payload of 65536"):
        build.ip_packet(A6, B6, 17, bytes(65536))
    with pytest.raises(ImpossiblePacket, match="UDP length"):
        build.udp_packet(A6, B6, 1, 2, bytes(65530))
    with pytest.raises(ImpossiblePacket, match="destination port 70000"):
        build.tcp_packet(A4, B4, 1, 70000)
    with pytest.raises(ImpossiblePacket, match="TCP options of 3 bytes"):
        build.tcp_packet(A4, B4, 1, 2, options=b"\1\1\1")
    with pytest.raises(ImpossiblePacket, match="TTL 256"):
        build.icmp_echo_request(A4, B4, 1, 2, ttl=256)
    with pytest.raises(ImpossiblePacket, match="echo identifier -1"):
        build.icmp_echo_reply(A6, B6, -1, 2)


def test_built_ipv4_is_an_atomic_datagram() -> None:
    packet = build.tcp_packet(A4, B4, 1, 2, b"data")
    scapy = IP(bytes(packet.data))
    assert (scapy.flags, scapy.id, scapy.ttl) == (2, 0, 64)  # DF, RFC 6864
    assert bytes(packet.data) == recomputed(bytes(packet.data))


# --- ICMP errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reason", "v4_code", "v6_code"),
    [
        (Unreachable.PROHIBITED, 13, 1),
        (Unreachable.NETWORK, 0, 0),
        (Unreachable.ADDRESS, 1, 3),
        (Unreachable.PORT, 3, 4),
    ],
)
def test_destination_unreachable_codes(reason: Unreachable, v4_code: int, v6_code: int) -> None:
    cases = ((IpPacket(v4_tcp()), v4_code), (IpPacket(v6_udp_with_extensions()), v6_code))
    for original, code in cases:
        error = destination_unreachable(original, reason)
        assert (error.source, error.destination) == (original.destination, original.source)
        assert (error.icmp_type, error.icmp_code) == ((3 if error.version == 4 else 1), code)
        assert error.is_icmp_error
        data = bytes(error.data)
        assert data == recomputed(data)
        quoted = IP(data)[IPerror] if error.version == 4 else IPv6(data)[IPerror6]
        assert bytes(quoted) == bytes(original.data)  # small packets are quoted whole


def test_quotes_are_cut_to_rfc_1812_and_rfc_4443_sizes() -> None:
    big4 = build.udp_packet(A4, B4, 1, 2, bytes(1400))
    big6 = build.udp_packet(A6, B6, 1, 2, bytes(1400))
    error4 = destination_unreachable(big4, Unreachable.PROHIBITED)
    error6 = destination_unreachable(big6, Unreachable.PROHIBITED)
    assert len(error4) == 576 and bytes(error4.data[28:]) == bytes(big4.data[:548])
    assert len(error6) == 1280 and bytes(error6.data[48:]) == bytes(big6.data[:1232])
    for error in (error4, error6):
        assert bytes(error.data) == recomputed(bytes(error.data))


def test_packet_too_big() -> None:
    v4 = packet_too_big(build.udp_packet(A4, B4, 1, 2, bytes(1400)), 1280)
    scapy4 = IP(bytes(v4.data))[ICMP]
    assert (scapy4.type, scapy4.code, scapy4.nexthopmtu) == (3, 4, 1280)
    v6 = packet_too_big(build.udp_packet(A6, B6, 1, 2, bytes(1400)), 1400)
    scapy6 = IPv6(bytes(v6.data))[ICMPv6PacketTooBig]
    assert (scapy6.type, scapy6.code, scapy6.mtu) == (2, 0, 1400)
    for packet in (v4, v6):
        assert bytes(packet.data) == recomputed(bytes(packet.data))


def test_icmp_errors_refuse_what_rfc_1122_and_4443_forbid() -> None:
    error = destination_unreachable(IpPacket(v4_tcp()), Unreachable.PORT)
    with pytest.raises(ImpossiblePacket, match="ICMP error about an ICMP error"):
        destination_unreachable(error, Unreachable.PORT)
    fragment = IpPacket(bytearray(bytes(IP(src=str(A4), dst=str(B4), frag=3) / (b"x" * 8))))
    with pytest.raises(ImpossiblePacket, match="non-first IPv4 fragment"):
        destination_unreachable(fragment, Unreachable.PROHIBITED)
    to_group = build.udp_packet(A6, IPv6Address("ff02::1"), 1, 2)
    with pytest.raises(ImpossiblePacket, match="source ff02::1 is not a unicast"):
        packet_too_big(to_group, 1280)
    assert packet_too_big(to_group, 1280, source=B6).source == B6  # RFC 4443 2.4(e.3)
    with pytest.raises(ImpossiblePacket, match="IPv6 MTU 1279 below"):
        packet_too_big(to_group, 1279, source=B6)
    with pytest.raises(ImpossiblePacket, match="IPv4 MTU 67 below"):
        packet_too_big(IpPacket(v4_tcp()), 67)
    with pytest.raises(ImpossiblePacket, match="IPv4 source"):
        destination_unreachable(IpPacket(v6_udp_with_extensions()), Unreachable.PORT, source=A4)


def test_unreachable_v6_type_is_decoded_by_scapy() -> None:
    error = destination_unreachable(IpPacket(v6_udp_with_extensions()), Unreachable.PROHIBITED)
    assert IPv6(bytes(error.data))[ICMPv6DestUnreach].code == 1
