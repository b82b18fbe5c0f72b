"""Hypothesis tests of the RFC 7915 translator: random TCP/UDP/ICMP echo packets translate to
packets scapy decodes to the same transport fields with every checksum right, and back to the
original; random and mutated bytes raise nothing but MalformedPacket (parsing) or
Untranslatable (translating)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoReply, ICMPv6EchoRequest, IPv6
from scapy.packet import Packet, Raw

from gateway.nat.translate import Untranslatable, ipv4_to_ipv6, ipv6_to_ipv4
from ippacket import IpPacket, MalformedPacket
from tests.ippacket_reference import recomputed

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ipv4 = st.integers(1, 2**32 - 1).map(IPv4Address)
ipv6 = st.integers(1, 2**128 - 1).map(IPv6Address)
u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
payloads = st.binary(max_size=200)


@st.composite
def transports(draw: st.DrawFn, version: int) -> Packet:
    """A TCP segment, a UDP datagram or an ICMP/ICMPv6 echo of `version`."""
    kind = draw(st.sampled_from(["tcp", "udp", "echo"]))
    payload = Raw(draw(payloads))
    if kind == "tcp":
        options = draw(st.sampled_from([[], [("MSS", 1460)], [("NOP", None), ("WScale", 7)]]))
        return (
            TCP(
                sport=draw(u16),
                dport=draw(u16),
                seq=draw(st.integers(0, 2**32 - 1)),
                flags=draw(u8),
                options=options,
            )
            / payload
        )
    if kind == "udp":
        return UDP(sport=draw(u16), dport=draw(u16)) / payload
    request, ident, seq = draw(st.booleans()), draw(u16), draw(u16)
    if version == 4:
        return ICMP(type=8 if request else 0, id=ident, seq=seq) / payload
    return (ICMPv6EchoRequest if request else ICMPv6EchoReply)(id=ident, seq=seq) / payload


def same_transport(before: bytes, after: bytes) -> None:
    """The transport fields and data scapy decodes agree (ICMP types differ by family)."""
    old = (IP(before) if before[0] >> 4 == 4 else IPv6(before)).payload
    new = (IP(after) if after[0] >> 4 == 4 else IPv6(after)).payload
    if isinstance(old, (TCP, UDP)):
        assert type(new) is type(old)
        assert (new.sport, new.dport) == (old.sport, old.dport)
    else:
        assert (new.id, new.seq) == (old.id, old.seq)
        requests = (8, 128)
        assert (old.type in requests) == (new.type in requests)
        old, new = old.payload, new.payload  # scapy's ICMPv6 echo keeps its data as a field
    assert bytes(new.payload) == bytes(old.payload)


@SETTINGS
@given(transports(4), st.tuples(ipv4, ipv4), st.tuples(ipv6, ipv6), u8, u8)
def test_random_ipv4_packets_translate_and_back(
    transport: Packet,
    addresses4: tuple[IPv4Address, IPv4Address],
    addresses6: tuple[IPv6Address, IPv6Address],
    tos: int,
    ttl: int,
) -> None:
    (source4, destination4), (source6, destination6) = addresses4, addresses6
    # DF set and identification 0, as the translator writes IPv4: the round trip is exact.
    original = bytes(
        IP(src=str(source4), dst=str(destination4), tos=tos, ttl=ttl, flags="DF", id=0) / transport
    )
    there = bytes(ipv4_to_ipv6(IpPacket(bytearray(original)), source6, destination6))
    assert recomputed(there) == there
    header = IPv6(there)
    assert (header.tc, header.hlim, header.plen) == (tos, ttl, len(original) - 20)
    same_transport(original, there)
    back = bytes(ipv6_to_ipv4(IpPacket(bytearray(there)), source4, destination4))
    assert back == original


@SETTINGS
@given(transports(6), st.tuples(ipv6, ipv6), st.tuples(ipv4, ipv4), u8, u8)
def test_random_ipv6_packets_translate_and_back(
    transport: Packet,
    addresses6: tuple[IPv6Address, IPv6Address],
    addresses4: tuple[IPv4Address, IPv4Address],
    traffic_class: int,
    hop_limit: int,
) -> None:
    (source6, destination6), (source4, destination4) = addresses6, addresses4
    original = bytes(
        IPv6(src=str(source6), dst=str(destination6), tc=traffic_class, hlim=hop_limit) / transport
    )
    there = bytes(ipv6_to_ipv4(IpPacket(bytearray(original)), source4, destination4))
    assert recomputed(there) == there
    header = IP(there)
    assert (header.tos, header.ttl, header.len) == (traffic_class, hop_limit, len(original) - 20)
    same_transport(original, there)
    back = bytes(ipv4_to_ipv6(IpPacket(bytearray(there)), source6, destination6))
    assert back == original


def translate_any(data: bytes) -> None:
    """Parse and translate `data` as the data plane would, quoted addresses included."""
    try:
        packet = IpPacket(bytearray(data))
    except MalformedPacket:
        return
    try:
        if packet.version == 4:
            ipv4_to_ipv6(packet, IPv6Address("64:ff9b::1"), IPv6Address("fd00::1"))
        else:
            ipv6_to_ipv4(packet, IPv4Address("192.0.2.1"), IPv4Address("198.51.100.1"))
    except Untranslatable:
        pass


@SETTINGS
@given(st.binary(max_size=120))
def test_random_bytes_raise_only_the_documented_exceptions(data: bytes) -> None:
    translate_any(data)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid packet (often an ICMP error quoting one) with some bytes overwritten; the
    outer checksums are fixed up half the time, so ICMP errors reach the quote parser."""
    version = draw(st.sampled_from([4, 6]))
    inner = bytes(
        (IP(src="192.0.2.1", dst="198.51.100.1") if version == 4 else IPv6(src="::1", dst="::2"))
        / draw(transports(version))
    )
    if draw(st.booleans()):
        kind = draw(st.sampled_from([3, 11, 12] if version == 4 else [1, 2, 3, 4]))
        code, rest = draw(st.integers(0, 16)), draw(st.integers(0, 2**32 - 1))
        body = bytes([kind, code, 0, 0]) + rest.to_bytes(4) + inner[: draw(st.integers(0, 80))]
        if version == 4:
            inner = bytes(IP(src="203.0.113.1", dst="192.0.2.1", proto=1) / body)
        else:
            inner = bytes(IPv6(src="::3", dst="::1", nh=58) / body)
    data = bytearray(inner)
    for _ in range(draw(st.integers(1, 4))):
        data[draw(st.integers(0, len(data) - 1))] = draw(u8)
    if draw(st.booleans()):
        try:
            return recomputed(bytes(data))
        except Exception:  # noqa: BLE001 - scapy may fail on the mutant; then test it as is
            return bytes(data)
    return bytes(data)


@SETTINGS
@given(mutated())
def test_mutated_packets_raise_only_the_documented_exceptions(data: bytes) -> None:
    translate_any(data)
