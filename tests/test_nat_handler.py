"""The ProxyHandler: grants, filters, NAT both ways, ICMP errors, RST and expiry.

Every translated packet's checksums are checked against scapy's own computation
(tests/ippacket_reference.py), and the clock is a number passed in.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.nat import handler as handler_module
from gateway.nat.handler import ProxyHandler, Target, grants_by_key, sources_by_key
from gateway.nat.stage import NOT_MINE
from gateway.nat.table import UNCONFIRMED_TTL
from gateway.resources.filters import parse_filter
from gateway.resources.resource import Resource, parse_resource_address
from ippacket import IpPacket, PacketError
from ippacket.build import icmp_echo_reply, icmp_echo_request, tcp_packet, udp_packet
from ippacket.headers import TcpHeader
from ippacket.icmp_errors import Unreachable, destination_unreachable
from tests.ippacket_reference import decode, recomputed

ALICE, BOB = b"A" * 32, b"B" * 32
ALICE_V4, ALICE_V6 = IPv4Address("100.64.0.2"), IPv6Address("fd00:64::2")
PROXY_V4, PROXY_V6 = IPv4Address("100.96.0.1"), IPv6Address("fd00:2021:1111:8000::1")
REAL_V4 = IPv4Address("10.98.0.5")
ROUTER = IPv4Address("10.98.0.1")


def handler(
    *, filters: tuple[tuple[str, str | None], ...] = ()
) -> tuple[ProxyHandler, list[bytearray]]:
    resources = [
        Resource(
            "app",
            parse_resource_address("app.corp.test"),
            tuple(parse_filter(p, ports) for p, ports in filters),
        )
    ]
    replies: list[bytearray] = []
    proxy = ProxyHandler(
        resources, grants_by_key(resources, [(ALICE, ["app"]), (BOB, [])]), replies.append
    )
    proxy.apply(PROXY_V4, PROXY_V6, Target(0, (REAL_V4,), ()))
    return proxy, replies


def checked(data: bytes | bytearray) -> bytes:
    """The packet, after asserting that its checksums are what scapy computes."""
    assert recomputed(bytes(data)) == bytes(data)
    return bytes(data)


def test_a_granted_tcp_flow_goes_to_the_real_address_and_replies_come_from_the_proxy() -> None:
    proxy, replies = handler()
    syn = tcp_packet(ALICE_V4, PROXY_V4, 40000, 443, b"hello", flags=TcpHeader.SYN)
    out = proxy.from_peer(ALICE, syn, now=0.0)
    assert out is not None
    fields = decode(checked(out))
    assert (fields.source, fields.destination) == (ALICE_V4, REAL_V4)
    assert (fields.source_port, fields.destination_port) == (40000, 443)

    answer = tcp_packet(REAL_V4, ALICE_V4, 443, 40000, b"hi", flags=TcpHeader.SYN | TcpHeader.ACK)
    back = proxy.to_peer(answer, now=0.1)
    assert isinstance(back, bytearray)
    fields = decode(checked(back))
    assert (fields.source, fields.destination) == (PROXY_V4, ALICE_V4)
    assert (fields.source_port, fields.destination_port) == (443, 40000)
    assert not replies


def test_ping_to_the_proxy_reaches_the_real_host_and_the_echo_reply_comes_back() -> None:
    proxy, _ = handler()
    out = proxy.from_peer(ALICE, icmp_echo_request(ALICE_V4, PROXY_V4, 7, 1, b"ping"), now=0.0)
    assert out is not None
    assert decode(checked(out)).destination == REAL_V4
    back = proxy.to_peer(icmp_echo_reply(REAL_V4, ALICE_V4, 7, 1, b"ping"), now=0.0)
    assert isinstance(back, bytearray)
    fields = decode(checked(back))
    assert (fields.source, fields.echo_id, fields.echo_sequence) == (PROXY_V4, 7, 1)


def test_a_peer_not_granted_the_resource_gets_icmp_prohibited_from_the_proxy() -> None:
    proxy, replies = handler()
    assert proxy.from_peer(BOB, udp_packet(ALICE_V4, PROXY_V4, 5000, 53, b"q"), now=0.0) is None
    assert len(replies) == 1
    fields = decode(checked(replies[0]))
    assert (fields.source, fields.destination) == (PROXY_V4, ALICE_V4)
    assert (fields.icmp_type, fields.icmp_code) == (3, Unreachable.PROHIBITED.icmpv4_code)
    assert proxy.counters["not_granted"] == 1
    assert not len(proxy.table)


def test_the_resources_filters_apply_to_the_translated_flow() -> None:
    proxy, replies = handler(filters=(("tcp", "443"),))
    assert proxy.from_peer(ALICE, tcp_packet(ALICE_V4, PROXY_V4, 1, 443), now=0.0) is not None
    assert proxy.from_peer(ALICE, tcp_packet(ALICE_V4, PROXY_V4, 1, 22), now=0.0) is None
    assert proxy.from_peer(ALICE, icmp_echo_request(ALICE_V4, PROXY_V4, 1, 1), now=0.0) is None
    assert [decode(r).icmp_code for r in replies] == [13, 13]
    assert proxy.counters["filtered"] == 2


def test_a_name_without_an_address_of_the_proxys_family_gets_unreachable_not_silence() -> None:
    proxy, replies = handler()
    packet = udp_packet(ALICE_V6, PROXY_V6, 5000, 53, b"q")
    assert proxy.from_peer(ALICE, packet, now=0.0) is None
    fields = decode(checked(replies[0]))
    assert (fields.source, fields.destination) == (PROXY_V6, ALICE_V6)
    assert (fields.icmp_type, fields.icmp_code) == (1, Unreachable.ADDRESS.icmpv6_code)


def test_a_proxy_address_with_no_mapping_gets_unreachable() -> None:
    proxy, replies = handler()
    other = IPv4Address("100.96.0.9")
    assert proxy.is_proxy(other.packed)
    assert proxy.from_peer(ALICE, udp_packet(ALICE_V4, other, 1, 2), now=0.0) is None
    assert decode(replies[0]).icmp_type == 3
    assert proxy.counters["no_mapping"] == 1


def test_is_proxy_knows_both_ranges_and_nothing_else() -> None:
    proxy, _ = handler()
    assert proxy.is_proxy(ip_address("100.127.255.254").packed)
    assert proxy.is_proxy(ip_address("fd00:2021:1111:8000::1f:ffff").packed)
    assert not proxy.is_proxy(ip_address("100.95.255.255").packed)
    assert not proxy.is_proxy(ip_address("100.128.0.1").packed)
    assert not proxy.is_proxy(ip_address("fd00:2021:1111:8000::20:0").packed)
    assert not proxy.is_proxy(ip_address("fd00:2021:1111:8001::1").packed)


def test_packets_that_are_no_translated_flow_are_not_mine() -> None:
    proxy, _ = handler()
    assert proxy.to_peer(udp_packet(REAL_V4, ALICE_V4, 53, 5000), now=0.0) is NOT_MINE
    proxy.from_peer(ALICE, udp_packet(ALICE_V4, PROXY_V4, 5000, 53), now=0.0)
    assert proxy.to_peer(udp_packet(REAL_V4, ALICE_V4, 53, 5001), now=0.0) is NOT_MINE
    assert proxy.to_peer(udp_packet(ROUTER, ALICE_V4, 53, 5000), now=0.0) is NOT_MINE
    assert isinstance(proxy.to_peer(udp_packet(REAL_V4, ALICE_V4, 53, 5000), now=0.0), bytearray)


def test_an_rst_from_the_real_host_ends_the_flow_at_once() -> None:
    proxy, _ = handler()
    proxy.from_peer(ALICE, tcp_packet(ALICE_V4, PROXY_V4, 40000, 443, flags=TcpHeader.SYN), 0.0)
    rst = tcp_packet(REAL_V4, ALICE_V4, 443, 40000, flags=TcpHeader.RST)
    back = proxy.to_peer(rst, now=0.1)
    assert isinstance(back, bytearray)  # the RST itself still reaches the peer
    assert decode(checked(back)).source == PROXY_V4
    assert not len(proxy.table)
    assert proxy.to_peer(tcp_packet(REAL_V4, ALICE_V4, 443, 40000), now=0.2) is NOT_MINE


def test_an_rst_from_the_peer_ends_the_flow_too() -> None:
    proxy, _ = handler()
    proxy.from_peer(ALICE, tcp_packet(ALICE_V4, PROXY_V4, 40000, 443, flags=TcpHeader.SYN), 0.0)
    proxy.from_peer(ALICE, tcp_packet(ALICE_V4, PROXY_V4, 40000, 443, flags=TcpHeader.RST), 1.0)
    assert not len(proxy.table)


def test_an_unanswered_flow_expires_after_a_minute_on_the_loops_timer() -> None:
    proxy, _ = handler()
    proxy.from_peer(ALICE, udp_packet(ALICE_V4, PROXY_V4, 5000, 53), now=10.0)
    deadline = proxy.next_deadline()
    assert deadline == 10.0 + UNCONFIRMED_TTL
    proxy.expire(deadline - 0.001)
    assert len(proxy.table) == 1
    proxy.expire(deadline)
    assert not len(proxy.table)
    assert proxy.counters["expired"] == 1
    assert proxy.to_peer(udp_packet(REAL_V4, ALICE_V4, 53, 5000), now=deadline) is NOT_MINE


def test_a_flow_in_use_is_not_expired_when_its_first_deadline_passes() -> None:
    proxy, _ = handler()
    proxy.from_peer(ALICE, udp_packet(ALICE_V4, PROXY_V4, 5000, 53), now=0.0)
    proxy.to_peer(udp_packet(REAL_V4, ALICE_V4, 53, 5000), now=50.0)  # answered: 2 min from now
    proxy.expire(UNCONFIRMED_TTL)
    assert len(proxy.table) == 1
    later = proxy.next_deadline()
    assert later == 50.0 + 120.0
    proxy.expire(later)
    assert not len(proxy.table)


def test_an_icmp_error_about_a_translated_flow_reaches_the_peer_with_its_quote_rewritten() -> None:
    proxy, _ = handler()
    sent = proxy.from_peer(ALICE, tcp_packet(ALICE_V4, PROXY_V4, 40000, 443, b"x" * 20), 0.0)
    assert sent is not None
    error = destination_unreachable(IpPacket(sent), Unreachable.PORT, source=ROUTER)
    back = proxy.to_peer(error, now=0.1)
    assert isinstance(back, bytearray)
    fields = decode(checked(back))
    assert (fields.source, fields.destination, fields.icmp_type) == (ROUTER, ALICE_V4, 3)
    quote = bytes(back[28:])
    quoted = decode(checked(quote))  # the whole packet was quoted: its checksums must hold
    assert (quoted.source, quoted.destination) == (ALICE_V4, PROXY_V4)
    assert (quoted.source_port, quoted.destination_port) == (40000, 443)
    assert proxy.counters["icmp_errors_translated"] == 1


def test_an_icmp_error_sent_by_the_real_host_itself_comes_from_the_proxy() -> None:
    proxy, _ = handler()
    sent = proxy.from_peer(ALICE, udp_packet(ALICE_V4, PROXY_V4, 5000, 53, b"q"), 0.0)
    assert sent is not None
    error = destination_unreachable(IpPacket(sent), Unreachable.PORT)  # from REAL_V4
    back = proxy.to_peer(error, now=0.1)
    assert isinstance(back, bytearray)
    assert decode(checked(back)).source == PROXY_V4
    assert decode(checked(bytes(back[28:]))).destination == PROXY_V4


def test_an_icmp_error_about_no_translated_flow_is_not_mine() -> None:
    proxy, _ = handler()
    proxy.from_peer(ALICE, udp_packet(ALICE_V4, PROXY_V4, 5000, 53, b"q"), 0.0)
    other = udp_packet(ALICE_V4, REAL_V4, 5001, 53, b"q")
    error = destination_unreachable(other, Unreachable.PORT, source=ROUTER)
    assert proxy.to_peer(error, now=0.1) is NOT_MINE


# ---- NAT64 / NAT46 (RFC 7915 through gateway/nat/translate.py) ----------------------------

REAL_V6 = IPv6Address("fd00:98::5")


def translating_handler(target: Target) -> tuple[ProxyHandler, list[bytearray]]:
    resources = [Resource("app", parse_resource_address("app.corp.test"))]
    replies: list[bytearray] = []
    alice = [ip_network(f"{ALICE_V4}/32"), ip_network(f"{ALICE_V6}/128")]
    proxy = ProxyHandler(
        resources,
        grants_by_key(resources, [(ALICE, ["app"])]),
        replies.append,
        sources=sources_by_key([(ALICE, alice)]),
    )
    proxy.apply(PROXY_V4, PROXY_V6, target)
    return proxy, replies


def test_nat64_tcp_to_the_ipv6_proxy_of_an_ipv4_only_name_and_the_reply_back() -> None:
    proxy, replies = translating_handler(Target(0, (REAL_V4,), ()))
    syn = tcp_packet(ALICE_V6, PROXY_V6, 40000, 443, b"hello", flags=TcpHeader.SYN)
    out = proxy.from_peer(ALICE, syn, now=0.0)
    assert out is not None
    fields = decode(checked(out))
    assert (fields.version, fields.source, fields.destination) == (4, ALICE_V4, REAL_V4)
    assert (fields.source_port, fields.destination_port) == (40000, 443)
    answer = tcp_packet(REAL_V4, ALICE_V4, 443, 40000, b"hi", flags=TcpHeader.SYN | TcpHeader.ACK)
    back = proxy.to_peer(answer, now=0.1)
    assert isinstance(back, bytearray)
    fields = decode(checked(back))
    assert (fields.version, fields.source, fields.destination) == (6, PROXY_V6, ALICE_V6)
    assert (fields.source_port, fields.destination_port) == (443, 40000)
    assert bytes(back).endswith(b"hi")
    assert not replies


def test_nat64_ping6_becomes_an_icmpv4_echo_and_the_reply_an_icmpv6_one() -> None:
    proxy, _ = translating_handler(Target(0, (REAL_V4,), ()))
    out = proxy.from_peer(ALICE, icmp_echo_request(ALICE_V6, PROXY_V6, 9, 3, b"p"), now=0.0)
    assert out is not None
    fields = decode(checked(out))
    assert (fields.version, fields.icmp_type, fields.echo_id) == (4, 8, 9)
    back = proxy.to_peer(icmp_echo_reply(REAL_V4, ALICE_V4, 9, 3, b"p"), now=0.0)
    assert isinstance(back, bytearray)
    fields = decode(checked(back))
    assert (fields.version, fields.source, fields.icmp_type, fields.echo_id) == (
        6,
        PROXY_V6,
        129,
        9,
    )


def test_nat46_udp_to_the_ipv4_proxy_of_an_ipv6_only_name_and_the_reply_back() -> None:
    proxy, _ = translating_handler(Target(0, (), (REAL_V6,)))
    out = proxy.from_peer(ALICE, udp_packet(ALICE_V4, PROXY_V4, 5000, 53, b"q"), now=0.0)
    assert out is not None
    fields = decode(checked(out))
    assert (fields.version, fields.source, fields.destination) == (6, ALICE_V6, REAL_V6)
    back = proxy.to_peer(udp_packet(REAL_V6, ALICE_V6, 53, 5000, b"a"), now=0.0)
    assert isinstance(back, bytearray)
    fields = decode(checked(back))
    assert (fields.version, fields.source, fields.destination) == (4, PROXY_V4, ALICE_V4)
    assert (fields.source_port, fields.destination_port) == (53, 5000)


def test_an_icmp_error_about_a_nat64_flow_reaches_the_peer_as_icmpv6_quoting_its_packet() -> None:
    proxy, _ = translating_handler(Target(0, (REAL_V4,), ()))
    sent = proxy.from_peer(ALICE, udp_packet(ALICE_V6, PROXY_V6, 5000, 53, b"q"), now=0.0)
    assert sent is not None
    error = destination_unreachable(IpPacket(sent), Unreachable.PORT, source=ROUTER)
    back = proxy.to_peer(error, now=0.1)
    assert isinstance(back, bytearray)
    fields = decode(checked(back))
    assert (fields.version, fields.source, fields.destination) == (6, PROXY_V6, ALICE_V6)
    assert (fields.icmp_type, fields.icmp_code) == (1, 4)  # port unreachable
    quoted = decode(checked(bytes(back[48:])))
    assert (quoted.source, quoted.destination) == (ALICE_V6, PROXY_V6)
    assert (quoted.source_port, quoted.destination_port) == (5000, 53)


def test_a_peer_without_an_address_of_the_other_family_gets_unreachable() -> None:
    proxy, replies = translating_handler(Target(0, (REAL_V4,), ()))
    assert proxy.from_peer(BOB, udp_packet(ALICE_V6, PROXY_V6, 1, 2), now=0.0) is None  # no grant
    resources = [Resource("app", parse_resource_address("app.corp.test"))]
    proxy.set_grants(resources, {BOB: frozenset({0})}, sources_by_key([(BOB, [])]))
    assert proxy.from_peer(BOB, udp_packet(ALICE_V6, PROXY_V6, 1, 2), now=0.0) is None
    assert proxy.counters["no_address_of_family"] == 1
    assert [decode(r).icmp_code for r in replies] == [1, 3]  # prohibited, then unreachable


def test_icmp_errors_for_a_peer_are_rate_limited_and_the_rest_counted() -> None:
    proxy, replies = handler()
    unmapped = IPv4Address("100.96.0.99")
    for i in range(20):
        proxy.from_peer(ALICE, udp_packet(ALICE_V4, unmapped, 1000 + i, 2), now=0.0)
    assert len(replies) == 6  # the burst, as the kernel's icmp_ratelimit
    assert proxy.counters["icmp_rate_limited"] == 14
    proxy.from_peer(ALICE, udp_packet(ALICE_V4, unmapped, 1, 2), now=1.0)
    assert len(replies) == 7  # one more per second


def test_a_reply_that_cannot_be_translated_back_is_dropped_and_counted_without_icmp() -> None:
    proxy, replies = translating_handler(Target(0, (REAL_V4,), ()))
    proxy.from_peer(ALICE, udp_packet(ALICE_V6, PROXY_V6, 5000, 53, b"q"), now=0.0)
    # A reply fragment is not even looked up; a reply whose UDP length lies is untranslatable.
    bad = bytearray(udp_packet(REAL_V4, ALICE_V4, 53, 5000, b"answer").data)
    bad[24:26] = (100).to_bytes(2, "big")  # UDP length beyond the packet
    assert proxy.to_peer(IpPacket(bad), now=0.1) is None
    assert proxy.counters["untranslatable_malformed"] == 1
    assert not replies  # never an ICMP error toward the real host through a peer's tunnel


def test_after_a_reload_mappings_follow_their_resource_and_new_filters_apply() -> None:
    proxy, replies = handler()
    other = IPv4Address("100.96.0.2")
    proxy.apply(other, IPv6Address("fd00:2021:1111:8000::2"), Target(0, (REAL_V4,), ()))
    web = Resource("web", parse_resource_address("web.corp.test"))
    app = Resource("app", parse_resource_address("app.corp.test"), (parse_filter("udp", "53"),))
    # "app" moved to index 1 and got a filter; nothing else changed.
    proxy.set_grants([web, app], {ALICE: frozenset({1})})
    assert proxy.from_peer(ALICE, udp_packet(ALICE_V4, PROXY_V4, 1, 53), now=0.0) is not None
    assert proxy.from_peer(ALICE, tcp_packet(ALICE_V4, PROXY_V4, 1, 443), now=0.0) is None
    assert proxy.counters["filtered"] == 1
    # A resource removed: its mappings go, its proxy addresses answer unreachable.
    proxy.set_grants([web], {ALICE: frozenset({0})})
    assert proxy.from_peer(ALICE, udp_packet(ALICE_V4, other, 1, 53), now=0.0) is None
    assert proxy.counters["no_mapping"] == 1
    assert len(replies) == 2


def test_the_mapping_table_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(handler_module, "MAX_TARGETS", 3)
    proxy, _ = handler()  # maps PROXY_V4 and PROXY_V6
    target = Target(0, (REAL_V4,), ())
    proxy.apply(IPv4Address("100.96.0.2"), IPv6Address("fd00:2021:1111:8000::2"), target)
    assert proxy.counters["mapping_table_full"] == 1  # the third fits, the fourth does not
    proxy.apply(PROXY_V4, PROXY_V6, target)  # remapping what is there always works
    assert proxy.counters["mapping_table_full"] == 1


# ---- bad input never crashes the handler -----------------------------------------------


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_mutated_packets_either_way_never_raise(data: st.DataObject) -> None:
    proxy, _ = translating_handler(Target(0, (REAL_V4,), (REAL_V6,)))
    seeds = [
        tcp_packet(ALICE_V4, PROXY_V4, 40000, 443, b"x" * 8),
        icmp_echo_request(ALICE_V6, PROXY_V6, 9, 1, b"p"),
        udp_packet(ALICE_V4, PROXY_V4, 5000, 53, b"q"),
    ]
    sent = [proxy.from_peer(ALICE, p, now=0.0) for p in seeds]
    replies = [
        tcp_packet(REAL_V4, ALICE_V4, 443, 40000, b"y" * 8),
        icmp_echo_reply(REAL_V6, ALICE_V6, 9, 1, b"p"),
        destination_unreachable(IpPacket(bytearray(sent[2] or b"")), Unreachable.PORT),
    ]
    packet = bytearray(data.draw(st.sampled_from([*seeds, *replies])).data)
    for _ in range(data.draw(st.integers(1, 6))):
        at = data.draw(st.integers(0, len(packet) - 1))
        packet[at] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        del packet[data.draw(st.integers(1, len(packet))) :]
    try:
        parsed = IpPacket(packet)
    except PacketError:
        return  # the Firewall counts it; the handler never sees it
    if ProxyHandler.is_proxy(bytes(parsed.destination.packed)):
        proxy.from_peer(ALICE, parsed, now=1.0)
    proxy.to_peer(IpPacket(bytearray(packet)), now=1.0)
