"""The NAT table: mapping, port choice on conflict, lifetimes, RST/FIN, bounds."""

from __future__ import annotations

import ipaddress
import random

from gateway.nat.table import (
    DEFAULT_MAX_ENTRIES,
    FIN_TTL,
    FIRST_RANDOM_PORT,
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    IPPROTO_TCP,
    IPPROTO_UDP,
    PORT_TRIES,
    TCP_FIN,
    TCP_RST,
    TCP_TTL,
    UDP_TTL,
    UNCONFIRMED_TTL,
    Entry,
    Inside,
    NatTable,
    Outside,
    Refused,
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
    assert isinstance(entry, Entry), entry
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
    assert FIRST_RANDOM_PORT <= second.outside.source_port <= 65535
    assert second.outside.source_port != 5555
    assert reply(table, second.outside, 0.1).inside.proxy == PROXY2


class _ScriptedPorts(random.Random):
    """A random source that returns the given ports in turn and counts the draws."""

    def __init__(self, ports: list[int]) -> None:
        super().__init__()
        self.ports = ports
        self.draws = 0

    def randint(self, a: int, b: int) -> int:
        assert (a, b) == (FIRST_RANDOM_PORT, 65535)
        self.draws += 1
        return self.ports[(self.draws - 1) % len(self.ports)]


def test_a_taken_port_costs_a_few_random_tries_not_a_scan() -> None:
    # A peer that took ports 1..3000 toward a host: its next flow from port 1 (NAT64 from
    # the same outside source) tries random ports, never the next port up.
    rng = _ScriptedPorts([2000, 2999, 40000])
    table = NatTable(peer_quota=4000, rng=rng)
    for port in range(1, 3001):
        out(table, tcp(sport=port), 0.0)
    entry = out(table, tcp(sport=1, proxy=PROXY2), 0.0)
    assert entry.outside.source_port == 40000
    assert rng.draws == 3


def test_a_flow_is_refused_after_port_tries_taken_ports() -> None:
    rng = _ScriptedPorts([1500])
    table = NatTable(rng=rng)
    out(table, tcp(sport=1500), 0.0)
    refused = table.outbound(
        tcp(sport=1500, proxy=PROXY2), REAL, outside_protocol=IPPROTO_TCP, outside_source=A_IP,
        now=0.0,
    )  # fmt: skip
    assert refused is Refused.NO_PORT
    assert rng.draws == PORT_TRIES


def test_nat64_entry_uses_the_outside_protocol_and_source() -> None:
    table = NatTable()
    v6_peer = ipaddress.ip_address("fd00:2021:1111::2")
    inside = Inside(
        PEER_A, IPPROTO_ICMPV6, v6_peer, 77, ipaddress.ip_address("fd00:2021:1111:8000::1"), 0
    )
    entry = table.outbound(
        inside, REAL, outside_protocol=IPPROTO_ICMP, outside_source=A_IP, now=0.0
    )
    assert isinstance(entry, Entry)
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


def _new(table: NatTable, inside: Inside, now: float = 0.0) -> Entry | Refused:
    return table.outbound(
        inside, REAL, outside_protocol=inside.protocol, outside_source=inside.source, now=now
    )


def test_full_table_of_answered_flows_refuses_new_flows() -> None:
    table = NatTable(max_entries=2, peer_quota=2)
    for port in (1, 2):
        reply(table, out(table, tcp(sport=port), 0.0).outside, 0.1)
    assert _new(table, tcp(PEER_B, B_IP, sport=3)) is Refused.TABLE_FULL
    table.expire(0.1 + TCP_TTL)
    assert out(table, tcp(PEER_B, B_IP, sport=3), 0.1 + TCP_TTL) is not None


def test_a_peer_at_its_quota_evicts_its_own_oldest_unanswered_entry() -> None:
    table = NatTable(max_entries=8, peer_quota=3)
    answered = out(table, tcp(sport=1), 0.0)
    reply(table, answered.outside, 0.1)
    for port in range(2, 12):  # unanswered: each new one pushes out the oldest
        out(table, tcp(sport=port), float(port))
    assert table.entries_of(PEER_A) == 3
    assert table.evicted == 8
    assert table.inbound(answered.outside, 20.0) is answered  # never evicted
    assert table.find(Outside(IPPROTO_TCP, REAL, 443, A_IP, 11)) is not None
    assert table.find(Outside(IPPROTO_TCP, REAL, 443, A_IP, 9)) is None
    assert out(table, tcp(PEER_B, B_IP), 20.0) is not None  # room kept for others


def test_a_peer_whose_entries_are_all_answered_is_refused_at_its_quota() -> None:
    table = NatTable(max_entries=8, peer_quota=2)
    for port in (1, 2):
        reply(table, out(table, tcp(sport=port), 0.0).outside, 0.1)
    assert _new(table, tcp(sport=3)) is Refused.PEER_QUOTA
    assert out(table, tcp(PEER_B, B_IP), 0.2) is not None


def test_a_full_table_evicts_the_oldest_unanswered_entry_for_another_peer() -> None:
    # A filled the whole table (its quota allows it here); B's new flow still gets in.
    table = NatTable(max_entries=4, peer_quota=4)
    for port in range(1, 5):
        out(table, tcp(sport=port), float(port))
    b = out(table, tcp(PEER_B, B_IP), 5.0)
    assert reply(table, b.outside, 5.1) is b
    assert table.find(Outside(IPPROTO_TCP, REAL, 443, A_IP, 1)) is None  # A's oldest went
    assert (len(table), table.evicted) == (4, 1)


def test_the_default_quota_keeps_most_of_the_table_for_others() -> None:
    table = NatTable()
    assert table.peer_quota == DEFAULT_MAX_ENTRIES // 8


def test_removal_keeps_the_per_peer_books() -> None:
    table = NatTable(max_entries=4, peer_quota=2)
    entry = out(table, tcp(sport=1), 0.0)
    out(table, tcp(sport=2), 0.0, TCP_RST)  # made and ended by its own RST
    table.inbound(entry.outside, 0.1, TCP_RST)
    assert table.entries_of(PEER_A) == 0
    table.expire(UNCONFIRMED_TTL)
    for port in range(3, 5):
        out(table, tcp(sport=port), UNCONFIRMED_TTL)
    assert (table.entries_of(PEER_A), table.evicted) == (2, 0)


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
