"""Hypothesis tests of ippacket against scapy as the independent decoder and checksummer:
random packets parse to scapy's fields, every setter leaves the checksums scapy computes
afresh, builders produce what scapy decodes, and random bytes raise only MalformedPacket."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_NOP
from scapy.layers.inet6 import (
    ICMPv6DestUnreach,
    ICMPv6EchoReply,
    ICMPv6EchoRequest,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.packet import Packet, Raw

from ippacket import IpPacket, MalformedPacket, build
from tests.ippacket_reference import decode, recomputed

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ipv4 = st.integers(1, 2**32 - 1).map(IPv4Address)
ipv6 = st.integers(1, 2**128 - 1).map(IPv6Address)
port = st.integers(0, 0xFFFF)
u16 = st.integers(0, 0xFFFF)
payloads = st.binary(max_size=80)


@st.composite
def transports(draw: st.DrawFn, version: int) -> Packet:  # noqa: PLR0911 - one return per kind
    kind = draw(st.sampled_from(["tcp", "udp", "udp0", "echo", "icmp", "other"]))
    payload = draw(payloads)
    if kind == "tcp":
        options = draw(st.sampled_from([[], [("MSS", 1460)], [("NOP", None), ("WScale", 7)]]))
        return TCP(
            sport=draw(port),
            dport=draw(port),
            seq=draw(st.integers(0, 2**32 - 1)),
            ack=draw(st.integers(0, 2**32 - 1)),
            flags=draw(st.integers(0, 255)),
            window=draw(u16),
            options=options,
        ) / Raw(payload)
    if kind in ("udp", "udp0"):
        # checksum 0 = none computed (legal on IPv4, and kept as 0 on rewrites for both)
        udp = UDP(sport=draw(port), dport=draw(port), chksum=0 if kind == "udp0" else None)
        return udp / Raw(payload)
    if kind == "echo":
        request = draw(st.booleans())
        ident, seq = draw(u16), draw(u16)
        if version == 4:
            return ICMP(type=8 if request else 0, id=ident, seq=seq) / Raw(payload)
        echo = ICMPv6EchoRequest if request else ICMPv6EchoReply
        return echo(id=ident, seq=seq) / Raw(payload)
    if kind == "icmp":  # an error quoting some bytes
        if version == 4:
            return ICMP(type=3, code=draw(st.integers(0, 15))) / Raw(payload)
        return ICMPv6DestUnreach(code=draw(st.integers(0, 6))) / Raw(payload)
    return Raw(payload)  # protocol left to scapy's default (no transport header)


@st.composite
def packets(draw: st.DrawFn, fragments: bool = False) -> bytes:
    """Random packets as scapy builds them (checksums computed by scapy)."""
    version = draw(st.sampled_from([4, 6]))
    transport = draw(transports(version))
    if version == 4:
        ip = IP(
            src=str(draw(ipv4)),
            dst=str(draw(ipv4)),
            ttl=draw(st.integers(0, 255)),
            tos=draw(st.integers(0, 255)),
            id=draw(u16),
            flags=draw(st.sampled_from([0, 2])),  # DF or not
            options=[IPOption_NOP()] * draw(st.integers(0, 8)),
        )
        if fragments and draw(st.booleans()):
            ip.flags = 1  # MF: a first fragment
        return bytes(ip / transport)
    ip = IPv6(
        src=str(draw(ipv6)),
        dst=str(draw(ipv6)),
        hlim=draw(st.integers(0, 255)),
        tc=draw(st.integers(0, 255)),
        fl=draw(st.integers(0, 2**20 - 1)),
    )
    chain: Packet = ip
    for ext in draw(st.lists(st.sampled_from(["hbh", "dst", "rt0"]), max_size=3)):
        if ext == "hbh":
            chain = chain / IPv6ExtHdrHopByHop()
        elif ext == "dst":
            chain = chain / IPv6ExtHdrDestOpt()
        else:  # segments left 0: the IPv6 destination is the final one
            chain = chain / IPv6ExtHdrRouting(addresses=[str(draw(ipv6))], segleft=0)
    if fragments and draw(st.booleans()):
        chain = chain / IPv6ExtHdrFragment(offset=0, m=draw(st.booleans()), id=draw(u16))
    return bytes(chain / transport)


@given(packets(fragments=True))
@SETTINGS
def test_parsed_fields_equal_scapys(data: bytes) -> None:
    expected = decode(data)
    packet = IpPacket(bytearray(data))
    assert packet.version == expected.version
    assert packet.source == expected.source
    assert packet.destination == expected.destination
    assert packet.protocol == expected.protocol
    assert (packet.l4_offset is None) == expected.non_first_fragment
    assert packet.source_port == expected.source_port
    assert packet.destination_port == expected.destination_port
    assert packet.icmp_type == expected.icmp_type
    assert packet.icmp_code == expected.icmp_code
    assert packet.echo_id == expected.echo_id
    assert packet.echo_sequence == expected.echo_sequence
    assert bytes(packet.data) == data


@given(packets(), st.data())
@SETTINGS
def test_every_setter_leaves_the_checksums_scapy_computes(data: bytes, draw: st.DataObject) -> None:
    assert recomputed(data) == data  # the starting point is valid
    buf = bytearray(data)
    packet = IpPacket(buf)
    family = ipv4 if packet.version == 4 else ipv6
    setters = ["source", "destination"]
    if packet.source_port is not None:
        setters += ["source_port", "destination_port"]
    if packet.echo_id is not None:
        setters += ["echo_id", "echo_sequence"]
    for name in draw.draw(st.lists(st.sampled_from(setters), min_size=1, max_size=6)):
        value = draw.draw(family if name in ("source", "destination") else u16)
        getattr(packet, f"set_{name}")(value)
        assert getattr(packet, name) == value
        assert bytes(buf) == recomputed(bytes(buf)), name


zero_or_u16 = st.one_of(st.just(0), u16)
# Setter steps: (field, how its value is chosen, raw value). "fold" picks the 16-bit value
# whose update folds the sum to 0, the edge where an RFC 1624 update must match RFC 1071.
steps = st.lists(
    st.tuples(
        st.sampled_from(["source", "destination", "first", "second"]),
        st.sampled_from(["zero", "fold", "any"]),
        st.integers(0, 2**128 - 1),
    ),
    min_size=1,
    max_size=6,
)


@st.composite
def zero_heavy_packets(draw: st.DrawFn) -> bytes:
    """TCP, UDP and echo packets whose fields and payloads are often zero: an ICMPv4 echo
    reply (no pseudo-header) can become all zero, whose checksum is 0xFFFF, not 0."""
    version = draw(st.sampled_from([4, 6]))
    kind = draw(st.sampled_from(["tcp", "udp", "echo"]))
    zero = draw(st.booleans())  # fields and payload all zero
    if zero:
        payload, first, second = bytes(draw(st.integers(0, 16))), 0, 0
    else:
        payload, first, second = draw(payloads), draw(zero_or_u16), draw(zero_or_u16)
    transport: Packet
    if kind == "tcp":
        transport = TCP(sport=first, dport=second, seq=0, ack=0, flags=0, window=0)
    elif kind == "udp":
        transport = UDP(sport=first, dport=second)
    elif version == 4:  # all zero: a reply, the message that can sum to 0
        icmp_type = 0 if zero else draw(st.sampled_from([0, 8]))
        transport = ICMP(type=icmp_type, id=first, seq=second)
    else:
        echo = draw(st.sampled_from([ICMPv6EchoReply, ICMPv6EchoRequest]))
        transport = echo(id=first, seq=second)
    if version == 4:
        ip: Packet = IP(src=str(draw(ipv4)), dst=str(draw(ipv4)))
    else:
        ip = IPv6(src=str(draw(ipv6)), dst=str(draw(ipv6)))
    return bytes(ip / transport / Raw(payload))


@given(zero_heavy_packets(), steps)
@example(  # always: an echo reply whose identifier goes 5 -> 0 leaves all-zero data
    bytes(IP(src="192.0.2.1", dst="192.0.2.2") / ICMP(type=0, id=5) / bytes(8)),
    [("first", "zero", 0)],
)
@SETTINGS
def test_incremental_checksums_equal_a_full_recomputation(
    data: bytes, rewrites: list[tuple[str, str, int]]
) -> None:
    """After each setter the packet equals itself with every checksum computed afresh, by
    ippacket and by scapy: all-zero data and sums folding to 0 included."""
    buf = bytearray(data)
    packet = IpPacket(buf)
    ports = packet.source_port is not None
    fields = {"first": "source_port" if ports else "echo_id"}
    fields["second"] = "destination_port" if ports else "echo_sequence"
    for field, how, raw in rewrites:
        if field in ("source", "destination"):
            bits = 32 if packet.version == 4 else 128
            address = (IPv4Address if bits == 32 else IPv6Address)(raw % 2**bits)
            getattr(packet, f"set_{field}")(address)
        else:
            name = fields[field]
            value = {"zero": 0, "fold": _folding(packet, name), "any": raw & 0xFFFF}[how]
            getattr(packet, f"set_{name}")(value)
        fresh = bytearray(buf)
        IpPacket(fresh).recompute_checksums()
        assert buf == fresh, (field, how)
        assert bytes(buf) == recomputed(bytes(buf)), (field, how)


def _folding(packet: IpPacket, name: str) -> int:
    """The value of 16-bit field `name` for which ~checksum + ~old + new is 0 modulo 0xFFFF."""
    header = packet.tcp or packet.udp or packet.icmpv4 or packet.icmpv6
    assert header is not None
    return (getattr(packet, name) + header.checksum) % 0xFFFF


@given(packets())
@SETTINGS
def test_rewriting_the_first_fragment_gives_the_whole_datagrams_checksum(data: bytes) -> None:
    """A first fragment's transport checksum covers the whole datagram, so it must change as
    the unfragmented packet's does (a recompute over the fragment would get it wrong)."""
    packet = IpPacket(bytearray(data))
    if packet.source_port is None:
        return
    fragment = bytearray(data)
    if packet.version == 4:
        fragment[6] |= 0x20  # MF: the same bytes as a first fragment (header checksum aside)
        fragment[10:12] = b"\0\0"
        first = IpPacket(fragment)
        first.recompute_checksums()
    else:
        first = IpPacket(_with_fragment_header(data))
    assert first.is_fragment
    new = IPv4Address("203.0.113.7") if packet.version == 4 else IPv6Address("2001:db8::7")
    for p in (packet, first):
        p.set_destination(new)
        p.set_source_port(4242)
    whole = packet.udp or packet.tcp
    part = first.udp or first.tcp
    assert whole is not None and part is not None
    assert part.checksum == whole.checksum


def _with_fragment_header(data: bytes) -> bytearray:
    ip = IPv6(data)
    tail = ip.payload
    ip.remove_payload()
    ip.plen = None
    ip.nh = 44
    return bytearray(bytes(ip / IPv6ExtHdrFragment(offset=0, m=1, id=9) / tail))


@given(st.data())
@SETTINGS
def test_built_packets_decode_in_scapy_with_valid_checksums(draw: st.DataObject) -> None:
    family = draw.draw(st.sampled_from([ipv4, ipv6]))
    src, dst = draw.draw(family), draw.draw(family)
    payload = draw.draw(payloads)
    sport, dport = draw.draw(port), draw.draw(port)
    kind = draw.draw(st.sampled_from(["udp", "tcp", "request", "reply"]))
    packet: IpPacket
    if kind == "udp":
        packet = build.udp_packet(src, dst, sport, dport, payload)
    elif kind == "tcp":
        packet = build.tcp_packet(src, dst, sport, dport, payload, sequence=7, options=b"\1" * 4)
    elif kind == "request":
        packet = build.icmp_echo_request(src, dst, sport, dport, payload)
    else:
        packet = build.icmp_echo_reply(src, dst, sport, dport, payload)
    data = bytes(packet.data)
    assert recomputed(data) == data
    fields = decode(data)
    assert (fields.source, fields.destination) == (src, dst)
    if kind in ("udp", "tcp"):
        assert (fields.source_port, fields.destination_port) == (sport, dport)
        layer = (IP(data) if src.version == 4 else IPv6(data))[UDP if kind == "udp" else TCP]
        assert bytes(layer.payload) == payload
    else:
        assert (fields.echo_id, fields.echo_sequence) == (sport, dport)
        assert fields.icmp_type in ((8, 128) if kind == "request" else (0, 129))


def _read_everything(packet: IpPacket) -> None:
    repr(packet)
    for view in (packet.ipv4, packet.ipv6, packet.udp, packet.tcp, packet.icmpv4, packet.icmpv6):
        if view is None:
            continue
        echo = getattr(view, "is_echo", False)  # identifier/sequence: echo only (debug check)
        for name in dir(view):
            if not name.startswith("_") and (echo or name not in ("identifier", "sequence")):
                getattr(view, name)
    for name in ("source_port", "destination_port", "icmp_type", "icmp_code", "echo_id"):
        getattr(packet, name)
    packet.echo_sequence  # noqa: B018 - reading is the test
    packet.is_icmp_error  # noqa: B018 - reading is the test


@given(st.binary(max_size=120))
@settings(max_examples=2000, deadline=None)
def test_random_bytes_raise_only_malformed_packet(data: bytes) -> None:
    try:
        packet = IpPacket(bytearray(data))
    except MalformedPacket:
        return
    _read_everything(packet)


@given(packets(fragments=True), st.data())
@SETTINGS
def test_damaged_packets_raise_only_malformed_packet(data: bytes, draw: st.DataObject) -> None:
    """Truncate a valid packet and overwrite a few bytes: near-valid input reaches deeper code."""
    buf = bytearray(data[: draw.draw(st.integers(0, len(data)))])
    for _ in range(draw.draw(st.integers(0, 4))):
        if buf:
            buf[draw.draw(st.integers(0, len(buf) - 1))] = draw.draw(st.integers(0, 255))
    try:
        packet = IpPacket(buf)
    except MalformedPacket:
        return
    _read_everything(packet)
