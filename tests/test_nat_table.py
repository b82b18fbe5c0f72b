"""The NAT table: mapping, port choice on conflict, lifetimes, RST/FIN, bounds."""

from __future__ import annotations

import ipaddress

from gateway.nat.table import (
    FIN_TTL,
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    IPPROTO_TCP,
    IPPROTO_UDP,
    TCP_FIN,
    TCP_RST,
    TCP_TTL,
    UDP_TTL,
    UNCONFIRMED_TTL,
    Entry,
    Inside,
    NatTable,
    Outside,
)

PEER_A, PEER_B = "alice", "bob"
A_IP = ipaddress.ip_address("100.64.0.2")
B_IP = ipaddress.ip_address("100.64.0.3")
PROXY1 = ipaddress.ip_address("100.96.0.1")
PROXY2 = ipaddress.ip_address("100.96.0.2")
REAL = ipaddress.ip_address("10.98.0.5")


IP = ipaddress.IPv4Address | ipaddress.IPv6Address


def tcp(
    peer: str = PEER_A, src: IP = A_IP, sport: int = 5555, proxy: IP = PROXY1, dport: int = 443
) -> Inside:
    return Inside(peer, IPPROTO_TCP, src, sport, proxy, dport)


def out(table: NatTable, inside: Inside, now: float, flags: int = 0, *, real: IP = REAL) -> Entry:
    entry = table.outbound(
        inside,
        real,
        outside_protocol=inside.protocol,
        outside_source=inside.source,
        now=now,
        tcp_flags=flags,
    )
    assert entry is not None
    return entry


def reply(table: NatTable, outside: Outside, now: float, flags: int = 0) -> Entry:
    entry = table.inbound(outside, now, flags)
    assert entry is not None
    return entry


def test_flow_keeps_its_port_and_reply_maps_back() -> None:
    table = NatTable()
    entry = out(table, tcp(), 0.0)
    assert entry.outside == Outside(IPPROTO_TCP, REAL, 443, A_IP, 5555)
    back = reply(table, Outside(IPPROTO_TCP, REAL, 443, A_IP, 5555), 0.1)
    assert back is entry and back.inside.proxy == PROXY1
    assert table.inbound(Outside(IPPROTO_TCP, REAL, 443, A_IP, 5556), 0.1) is None
    assert out(table, tcp(), 0.2) is entry  # the same flow, the same entry


def test_two_proxies_to_one_real_host_get_different_ports() -> None:
    table = NatTable()
    first = out(table, tcp(proxy=PROXY1), 0.0)
    second = out(table, tcp(proxy=PROXY2), 0.0)
    assert first.outside.source_port == 5555
    assert second.outside.source_port == 5556
    assert reply(table, second.outside, 0.1).inside.proxy == PROXY2


def test_port_search_wraps_past_65535_to_1() -> None:
    table = NatTable()
    out(table, tcp(sport=65535, proxy=PROXY1), 0.0)
    assert out(table, tcp(sport=65535, proxy=PROXY2), 0.0).outside.source_port == 1


def test_nat64_entry_uses_the_outside_protocol_and_source() -> None:
    table = NatTable()
    v6_peer = ipaddress.ip_address("fd00:2021:1111::2")
    inside = Inside(
        PEER_A, IPPROTO_ICMPV6, v6_peer, 77, ipaddress.ip_address("fd00:2021:1111:8000::1"), 0
    )
    entry = table.outbound(
        inside, REAL, outside_protocol=IPPROTO_ICMP, outside_source=A_IP, now=0.0
    )
    assert entry is not None
    assert entry.outside == Outside(IPPROTO_ICMP, REAL, 0, A_IP, 77)
    assert table.inbound(Outside(IPPROTO_ICMP, REAL, 0, A_IP, 77), 1.0) is entry


def test_unanswered_flow_lives_60_seconds() -> None:
    table = NatTable()
    out(table, tcp(), 0.0)
    assert table.expire(UNCONFIRMED_TTL - 0.1) == 0
    assert table.expire(UNCONFIRMED_TTL) == 1
    assert len(table) == 0


def test_answered_tcp_lives_2h4min_after_the_last_packet() -> None:
    table = NatTable()
    entry = out(table, tcp(), 0.0)
    table.inbound(entry.outside, 1.0)
    out(table, tcp(), 100.0)
    assert table.expire(100.0 + TCP_TTL - 1) == 0
    assert table.expire(100.0 + TCP_TTL) == 1


def test_answered_udp_lives_2_minutes() -> None:
    table = NatTable()
    inside = Inside(PEER_A, IPPROTO_UDP, A_IP, 4000, PROXY1, 53)
    entry = out(table, inside, 0.0)
    table.inbound(entry.outside, 1.0)
    assert table.expire(1.0 + UDP_TTL - 0.1) == 0
    assert table.expire(1.0 + UDP_TTL) == 1


def test_fin_both_ways_leaves_five_seconds() -> None:
    table = NatTable()
    entry = out(table, tcp(), 0.0)
    table.inbound(entry.outside, 1.0)
    out(table, tcp(), 2.0, TCP_FIN)
    assert table.expire(2.0 + FIN_TTL) == 0  # only one side has closed
    table.inbound(entry.outside, 3.0, TCP_FIN)
    assert table.expire(3.0 + FIN_TTL - 0.1) == 0
    assert table.expire(3.0 + FIN_TTL) == 1


def test_rst_ends_the_entry_at_once_from_either_side() -> None:
    table = NatTable()
    entry = out(table, tcp(), 0.0)
    assert table.inbound(entry.outside, 1.0, TCP_RST) is entry  # the RST itself is delivered
    assert len(table) == 0
    out(table, tcp(sport=6000), 2.0, TCP_RST)
    assert len(table) == 0


def test_peers_are_kept_apart() -> None:
    table = NatTable()
    a = out(table, tcp(PEER_A, A_IP), 0.0)
    b = out(table, tcp(PEER_B, B_IP), 0.0)
    assert a is not b
    assert reply(table, b.outside, 0.1).inside.peer == PEER_B


def test_full_table_refuses_new_flows() -> None:
    table = NatTable(max_entries=2)
    assert out(table, tcp(sport=1), 0.0) is not None
    assert out(table, tcp(sport=2), 0.0) is not None
    refused = table.outbound(
        tcp(sport=3), REAL, outside_protocol=IPPROTO_TCP, outside_source=A_IP, now=0.0
    )
    assert refused is None
    table.expire(UNCONFIRMED_TTL)
    assert out(table, tcp(sport=3), UNCONFIRMED_TTL) is not None


def test_a_new_real_address_for_the_same_flow_starts_over() -> None:
    table = NatTable()
    first = out(table, tcp(), 0.0)
    moved = out(table, tcp(), 1.0, real=ipaddress.ip_address("10.98.0.6"))
    assert moved is not first
    assert table.inbound(first.outside, 1.1) is None
    assert len(table) == 1


def test_packets_of_a_flow_move_its_deadline_without_growing_the_heap() -> None:
    table = NatTable()
    inside = tcp()
    for i in range(10_000):
        out(table, inside, now=float(i))
    assert len(table._deadlines) == 1  # one deadline per entry, not one per packet
    assert table.expire(UNCONFIRMED_TTL) == 0  # used since: looked at again, not removed
    assert table.expire(9_999 + UNCONFIRMED_TTL) == 1


def test_the_table_knows_which_real_addresses_its_entries_translate_to() -> None:
    table = NatTable()
    assert not table.has_real(REAL.packed)
    entry = out(table, tcp(), now=0.0)
    assert table.has_real(REAL.packed)
    reply(table, entry.outside, now=1.0, flags=TCP_RST)
    assert not table.has_real(REAL.packed)
