"""UDP I/O: the pure batch planner and GRO splitter, then real sockets in namespaces."""

from __future__ import annotations

import contextlib
import select
import socket
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyroute2 import netns as pyroute2_netns

from gateway.endpoint import Endpoint, StickyEndpoint
from gateway.udp_io import (
    GSO_MAX_BYTES,
    GSO_MAX_SEGMENTS,
    IP_PKTINFO,
    GsoBatch,
    UdpIo,
    endpoint_from_sockaddr,
    local_from_pktinfo,
    plan_gso_batches,
    sockaddr_for,
    source_cmsg,
    split_gro,
)
from testbed.netns import Hosts, NetNS, veth

A: Endpoint = ("192.0.2.1", 51820)
B: Endpoint = ("2001:db8::2", 4500)


# --- plan_gso_batches ----------------------------------------------------------------------


def _shape(batches: list[GsoBatch]) -> list[tuple[Endpoint, int, list[int]]]:
    return [(b.dest, b.segment_size, [len(d) for d in b.datagrams]) for b in batches]


def test_plan_groups_equal_runs_and_lets_a_shorter_one_close_the_batch() -> None:
    items = [(A, b"x" * 100)] * 3 + [(A, b"y" * 40), (A, b"z" * 100)]
    assert _shape(plan_gso_batches(items)) == [(A, 100, [100, 100, 100, 40]), (A, 100, [100])]


def test_plan_splits_on_destination_change_and_on_a_longer_datagram() -> None:
    items = [(A, bytes(10)), (B, bytes(10)), (B, bytes(10)), (B, bytes(20)), (A, bytes(10))]
    assert _shape(plan_gso_batches(items)) == [
        (A, 10, [10]),
        (B, 10, [10, 10]),
        (B, 20, [20]),
        (A, 10, [10]),
    ]


def test_plan_caps_segments_and_bytes() -> None:
    many = [(A, bytes(8))] * (GSO_MAX_SEGMENTS * 2 + 1)
    assert [len(b.datagrams) for b in plan_gso_batches(many)] == [64, 64, 1]
    big = [(A, bytes(1400))] * 100
    counts = [len(b.datagrams) for b in plan_gso_batches(big)]
    assert counts == [
        GSO_MAX_BYTES // 1400,
        GSO_MAX_BYTES // 1400,
        100 - 2 * (GSO_MAX_BYTES // 1400),
    ]


def test_plan_splits_where_the_source_address_changes() -> None:
    first = StickyEndpoint(*A, bytes([10, 0, 0, 1]))
    second = StickyEndpoint(*A, bytes([10, 0, 0, 2]))
    items = [(first, bytes(10)), (first, bytes(10)), (second, bytes(10)), (A, bytes(10))]
    batches = plan_gso_batches(items)
    assert [(b.source, len(b.datagrams)) for b in batches] == [
        (first.local, 2),
        (second.local, 1),
        (b"", 1),
    ]


def test_plan_keeps_empty_and_oversized_datagrams_alone() -> None:
    items = [(A, b""), (A, b""), (A, bytes(70_000)), (A, bytes(5))]
    assert _shape(plan_gso_batches(items)) == [
        (A, 0, [0]),
        (A, 0, [0]),
        (A, 70_000, [70_000]),
        (A, 5, [5]),
    ]


def test_plan_empty_input() -> None:
    assert plan_gso_batches([]) == []


_items = st.lists(
    st.tuples(st.sampled_from([A, B]), st.integers(0, 3000).map(lambda n: bytes([n % 251]) * n)),
    max_size=300,
)


@settings(max_examples=200, deadline=None)
@given(items=_items, max_segments=st.integers(1, 64), max_bytes=st.integers(1, 65_535))
def test_plan_properties(
    items: list[tuple[Endpoint, bytes]], max_segments: int, max_bytes: int
) -> None:
    batches = plan_gso_batches(items, max_segments, max_bytes)
    # Order and content preserved exactly.
    assert [(b.dest, d) for b in batches for d in b.datagrams] == items
    for i, batch in enumerate(batches):
        sizes = [len(d) for d in batch.datagrams]
        assert sizes[0] == batch.segment_size
        if len(sizes) > 1:
            assert len(sizes) <= max_segments
            assert sum(sizes) <= max_bytes
            assert batch.segment_size > 0
            assert all(s == batch.segment_size for s in sizes[:-1])
            assert 0 < sizes[-1] <= batch.segment_size
        # Greedy: the next datagram could not have joined this batch.
        if i + 1 < len(batches):
            nxt = batches[i + 1].datagrams[0]
            could_join = (
                batches[i + 1].dest == batch.dest
                and sizes[-1] == batch.segment_size
                and 0 < len(nxt) <= batch.segment_size
                and len(sizes) < max_segments
                and sum(sizes) + len(nxt) <= max_bytes
            )
            assert not could_join


# --- GRO splitting and addresses -------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(data=st.binary(max_size=5000), size=st.integers(1, 2000))
def test_split_gro_is_exact(data: bytes, size: int) -> None:
    parts = split_gro(memoryview(data), size)
    assert b"".join(parts) == data
    assert all(len(p) == size for p in parts[:-1])
    assert 0 < len(parts[-1]) <= size or data == b""


def test_split_gro_without_segment_size_is_one_datagram() -> None:
    assert [bytes(p) for p in split_gro(memoryview(b"abc"), 0)] == [b"abc"]


def test_endpoint_forms() -> None:
    assert endpoint_from_sockaddr(("::ffff:10.1.2.3", 5, 0, 0)) == ("10.1.2.3", 5)
    assert endpoint_from_sockaddr(("2001:db8::1", 6, 0, 0)) == ("2001:db8::1", 6)
    assert endpoint_from_sockaddr(("10.0.0.1", 7)) == ("10.0.0.1", 7)
    assert sockaddr_for(("10.0.0.1", 7), socket.AF_INET6) == ("::ffff:10.0.0.1", 7)
    assert sockaddr_for(("10.0.0.1", 7), socket.AF_INET) == ("10.0.0.1", 7)
    assert sockaddr_for(("fe80::1%lo", 7), socket.AF_INET6) == ("fe80::1%lo", 7)
    for bad in (("example.com", 7), ("10.0.0.1", 0), ("10.0.0.1", 70_000), ("", 1)):
        with pytest.raises(ValueError, match=r"."):
            sockaddr_for(bad, socket.AF_INET6)


def test_local_address_from_received_pktinfo() -> None:
    v6 = socket.inet_pton(socket.AF_INET6, "fd00:aa::2")
    mapped = socket.inet_pton(socket.AF_INET6, "::ffff:10.0.0.2")
    v4 = socket.inet_aton("10.0.0.2")
    ifindex = (7).to_bytes(4, "little")
    assert local_from_pktinfo(socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, v6 + ifindex) == v6
    # An IPv4 datagram on the dual-stack socket: v4-mapped, kept as the 4 IPv4 bytes.
    assert local_from_pktinfo(socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, mapped + ifindex) == v4
    # IP_PKTINFO: ifindex, spec_dst (the local address), then the header's destination.
    broadcast = socket.inet_aton("10.0.0.255")
    assert local_from_pktinfo(socket.IPPROTO_IP, IP_PKTINFO, ifindex + v4 + broadcast) == v4
    assert local_from_pktinfo(socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, v6[:10]) is None
    assert local_from_pktinfo(socket.SOL_UDP, 104, bytes(20)) is None
    assert endpoint_from_sockaddr(("::ffff:10.1.2.3", 5, 0, 0), v4) == ("10.1.2.3", 5)
    sticky = endpoint_from_sockaddr(("::ffff:10.1.2.3", 5, 0, 0), v4)
    assert isinstance(sticky, StickyEndpoint)
    assert sticky.local == v4


def test_source_control_messages() -> None:
    v4 = socket.inet_aton("10.0.0.2")
    v6 = socket.inet_pton(socket.AF_INET6, "fd00:aa::2")
    mapped = socket.inet_pton(socket.AF_INET6, "::ffff:10.0.0.2")
    no_ifindex = bytes(4)
    assert source_cmsg(v6, socket.AF_INET6) == (
        socket.IPPROTO_IPV6,
        socket.IPV6_PKTINFO,
        v6 + no_ifindex,
    )
    assert source_cmsg(v4, socket.AF_INET6) == (
        socket.IPPROTO_IPV6,
        socket.IPV6_PKTINFO,
        mapped + no_ifindex,
    )
    assert source_cmsg(v4, socket.AF_INET) == (
        socket.IPPROTO_IP,
        IP_PKTINFO,
        no_ifindex + v4 + bytes(4),
    )


# --- real sockets --------------------------------------------------------------------------


@contextlib.contextmanager
def inside(ns: NetNS) -> Iterator[None]:
    """Run the block in `ns`: sockets opened here stay in it after we switch back."""
    pyroute2_netns.pushns(ns.name)
    try:
        yield
    finally:
        pyroute2_netns.popns()


def _wait_readable(fd: int, timeout: float = 5.0) -> None:
    readable, _, _ = select.select([fd], [], [], timeout)
    if not readable:
        raise TimeoutError("nothing arrived")


def _recv_all(io: UdpIo, count: int) -> list[tuple[bytes, Endpoint]]:
    got: list[tuple[bytes, Endpoint]] = []
    while len(got) < count:
        if not io.pending:
            _wait_readable(io.fileno())
        got += [(bytes(d), ep) for d, ep in io.recv_batch(count - len(got))]
    return got


def _plain_recv_all(sock: socket.socket, count: int) -> list[bytes]:
    got: list[bytes] = []
    while len(got) < count:
        _wait_readable(sock.fileno())
        got.append(sock.recv(65536))
    return got


def _payloads(count: int, size: int, last: int) -> list[bytes]:
    out = [bytes([i]) * size for i in range(count - 1)]
    return [*out, b"\xee" * last]


@pytest.mark.netns
@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_gso_send_gro_receive_over_loopback(netns_hosts: Hosts, host: str) -> None:
    ns = netns_hosts.add("fzxlo")
    with inside(ns), UdpIo(0) as sender, UdpIo(0) as receiver:
        assert sender.gso_enabled
        assert receiver.gro_enabled
        payloads = _payloads(20, 1200, 333)
        stats = sender.send_batch([((host, receiver.port), p) for p in payloads])
        assert (stats.sent, stats.consumed, stats.dropped, stats.blocked) == (20, 20, 0, False)
        assert stats.gso_batches == 1
        assert stats.syscalls == 1
        got = _recv_all(receiver, 20)
    assert [d for d, _ in got] == payloads
    assert {ep for _, ep in got} == {(host, sender.port)}
    # The kernel handed the GSO send to the GRO socket still coalesced: fewer reads than
    # datagrams, and every datagram cut back exactly.
    assert receiver.counters.rx_coalesced_reads >= 1
    assert receiver.counters.rx_syscalls < 20
    assert receiver.counters.rx_datagrams == 20


@pytest.mark.netns
def test_recv_batch_bounds_and_keeps_the_rest_pending(netns_hosts: Hosts) -> None:
    ns = netns_hosts.add("fzxlo")
    with inside(ns), UdpIo(0) as sender, UdpIo(0) as receiver:
        payloads = _payloads(10, 500, 500)
        sender.send_batch([(("127.0.0.1", receiver.port), p) for p in payloads])
        _wait_readable(receiver.fileno())
        first = receiver.recv_batch(3)
        assert len(first) == 3
        assert receiver.pending
        rest = _recv_all(receiver, 7)
        assert not receiver.pending
    assert [bytes(d) for d, _ in first] + [d for d, _ in rest] == payloads


@pytest.mark.netns
def test_gso_send_arrives_separately_at_a_plain_receiver_over_veth(netns_hosts: Hosts) -> None:
    a, b = netns_hosts.add("fzxa"), netns_hosts.add("fzxb")
    veth(a, b, "10.77.0.1/24", "10.77.0.2/24")
    veth(a, b, "fd77::1/64", "fd77::2/64")
    with inside(b):
        plain4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        plain6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    with inside(a), UdpIo(0) as sender, plain4, plain6:
        plain4.bind(("10.77.0.2", 0))
        plain6.bind(("fd77::2", 0))
        p4 = _payloads(30, 1000, 10)
        p6 = _payloads(30, 1100, 1100)
        items = [(("10.77.0.2", plain4.getsockname()[1]), p) for p in p4]
        items += [(("fd77::2", plain6.getsockname()[1]), p) for p in p6]
        stats = sender.send_batch(items)
        assert stats.sent == 60
        assert stats.gso_batches == 2
        assert sender.counters.gso_fallbacks == 0
        assert _plain_recv_all(plain4, 30) == p4
        assert _plain_recv_all(plain6, 30) == p6


SO_NO_CHECK = 11


@pytest.mark.netns
def test_gso_refused_falls_back_to_single_sends_and_remembers(netns_hosts: Hosts) -> None:
    # A socket with UDP checksums off cannot use GSO: the kernel refuses with EINVAL.
    a, b = netns_hosts.add("fzxa"), netns_hosts.add("fzxb")
    veth(a, b, "10.78.0.1/24", "10.78.0.2/24")
    with inside(b):
        plain = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with inside(a), UdpIo(0, bind_host="10.78.0.1") as sender, plain:
        sender.sock.setsockopt(socket.SOL_SOCKET, SO_NO_CHECK, 1)
        plain.bind(("10.78.0.2", 0))
        dest = ("10.78.0.2", plain.getsockname()[1])
        payloads = _payloads(3, 1000, 900)
        stats = sender.send_batch([(dest, p) for p in payloads])
        assert (stats.sent, stats.dropped, stats.gso_batches) == (3, 0, 0)
        assert sender.counters.gso_fallbacks == 1
        assert not sender.gso_enabled
        assert _plain_recv_all(plain, 3) == payloads
        # Remembered: the next batch goes out one by one without trying GSO again.
        stats = sender.send_batch([(dest, b"ok")] * 2)
        assert (stats.sent, stats.syscalls, sender.counters.gso_fallbacks) == (2, 2, 1)
        assert _plain_recv_all(plain, 2) == [b"ok", b"ok"]


@pytest.mark.netns
def test_segments_over_path_mtu_go_singly_and_gso_stays_on(netns_hosts: Hosts) -> None:
    # GSO cannot cut segments larger than the MTU (EMSGSIZE); plain sends fragment them.
    a, b = netns_hosts.add("fzxa"), netns_hosts.add("fzxb")
    veth(a, b, "10.79.0.1/24", "10.79.0.2/24", mtu=1280)
    with inside(b):
        plain = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with inside(a), UdpIo(0) as sender, plain:
        plain.bind(("10.79.0.2", 0))
        dest = ("10.79.0.2", plain.getsockname()[1])
        big = _payloads(3, 1400, 1400)
        stats = sender.send_batch([(dest, p) for p in big])
        assert (stats.sent, stats.dropped, stats.gso_batches) == (3, 0, 0)
        assert sender.counters.gso_oversize == 1
        assert sender.gso_enabled
        assert _plain_recv_all(plain, 3) == big
        small = _payloads(4, 1000, 1000)
        stats = sender.send_batch([(dest, p) for p in small])
        assert (stats.sent, stats.gso_batches, stats.syscalls) == (4, 1, 1)
        assert _plain_recv_all(plain, 4) == small


@pytest.mark.netns
def test_bad_endpoints_are_dropped_and_counted(netns_hosts: Hosts) -> None:
    ns = netns_hosts.add("fzxlo")
    with inside(ns), UdpIo(0) as sender, UdpIo(0) as receiver:
        good = ("127.0.0.1", receiver.port)
        items = [(("not-an-ip", 1), b"a"), (("10.0.0.1", 0), b"b"), (good, b"c")]
        # 203.0.113.0/24 has no route in an empty namespace: ENETUNREACH.
        items += [(("203.0.113.9", 9), b"d"), (("203.0.113.9", 9), b"d")]
        stats = sender.send_batch(items)
        assert (stats.sent, stats.dropped, stats.consumed) == (1, 4, 5)
        assert sender.counters.tx_dropped == 4
        assert [d for d, _ in _recv_all(receiver, 1)] == [b"c"]


@pytest.mark.netns
def test_socket_buffers_forced_beyond_sysctl_cap_as_root(netns_hosts: Hosts) -> None:
    ns = netns_hosts.add("fzxlo")
    with inside(ns), UdpIo(0, rcvbuf=16 * 1024 * 1024, sndbuf=2 * 1024 * 1024) as io:
        assert io.rcvbuf == 16 * 1024 * 1024
        assert io.sndbuf == 2 * 1024 * 1024
    with pytest.raises(ValueError, match="buffer size"):
        UdpIo(0, rcvbuf=0)


@pytest.mark.netns
def test_send_stops_at_a_full_socket_buffer(netns_hosts: Hosts) -> None:
    # A slow qdisc holds the sent packets, so they keep counting against the small send
    # buffer: the socket fills and the call must stop and say so, not spin or drop.
    a, b = netns_hosts.add("fzxa"), netns_hosts.add("fzxb")
    name_a, _ = veth(a, b, "10.80.0.1/24", "10.80.0.2/24")
    a.run("tc", "qdisc", "add", "dev", name_a, "root", "tbf", "rate", "100kbit",
          "burst", "1600", "limit", "10000000")  # fmt: skip
    with inside(a), UdpIo(0, sndbuf=65536) as sender:
        items = [(("10.80.0.2", 9), bytes(1400))] * 2000
        stats = sender.send_batch(items)
        assert stats.blocked
        assert 0 < stats.consumed == stats.sent < 2000
        assert stats.dropped == 0
        # Still full: nothing more goes, and the caller keeps items[consumed:].
        again = sender.send_batch(items[stats.consumed :])
        assert again.blocked
        assert again.consumed < stats.consumed


IP_RECVERR = 11
IPV6_RECVERR = 25


@pytest.mark.netns
def test_queued_icmp_error_is_skipped_on_receive(netns_hosts: Hosts) -> None:
    ns = netns_hosts.add("fzxlo")
    with inside(ns), UdpIo(0) as io, UdpIo(0) as peer:
        closed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        closed.bind(("127.0.0.1", 0))
        dead_port = closed.getsockname()[1]
        closed.close()
        # IP_RECVERR makes even an unconnected socket queue the port-unreachable error.
        io.sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVERR, 1)
        io.sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
        io.send_batch([(("127.0.0.1", dead_port), b"x")])
        peer.send_batch([(("127.0.0.1", io.port), b"after")])
        got = _recv_all(io, 1)
        assert [d for d, _ in got] == [b"after"]
        assert io.counters.rx_errors == 1


@pytest.mark.netns
def test_ipv4_only_socket_when_bound_to_an_ipv4_address(netns_hosts: Hosts) -> None:
    ns = netns_hosts.add("fzxlo")
    with inside(ns), UdpIo(0, bind_host="127.0.0.1") as io, UdpIo(0) as peer:
        assert io.family == socket.AF_INET
        payloads = _payloads(5, 700, 100)
        stats = io.send_batch([(("127.0.0.1", peer.port), p) for p in payloads])
        assert (stats.sent, stats.gso_batches) == (5, 1)
        assert [(d, ep) for d, ep in _recv_all(peer, 5)] == [
            (p, ("127.0.0.1", io.port)) for p in payloads
        ]
        # An IPv6 destination cannot leave an IPv4 socket: dropped and counted, no exception.
        stats = io.send_batch([(("::1", peer.port), b"x")])
        assert (stats.sent, stats.dropped) == (0, 1)
        peer.send_batch([(("127.0.0.1", io.port), b"back")])
        assert _recv_all(io, 1) == [(b"back", ("127.0.0.1", peer.port))]


def _two_address_hosts(hosts: Hosts, net: int) -> tuple[NetNS, NetNS, str]:
    """A client host and a gateway host whose side of the link has two IPv4 and two IPv6
    addresses, the first ones the kernel's choice of source; returns them and the link."""
    client, gateway = hosts.add("fzxc"), hosts.add("fzxg")
    _, gateway_link = veth(client, gateway, f"10.{net}.0.3/24", f"10.{net}.0.1/24")
    client.ip("addr", "add", f"fd{net}::3/64", "dev", _, "nodad")
    gateway.ip("addr", "add", f"fd{net}::1/64", "dev", gateway_link, "nodad")
    gateway.ip("addr", "add", f"10.{net}.0.2/24", "dev", gateway_link)
    # Deprecated (preferred_lft 0): still an address of the host, never the kernel's choice
    # of source (IPv6 would otherwise prefer the newest address).
    gateway.ip("addr", "add", f"fd{net}::2/64", "dev", gateway_link, "nodad", "preferred_lft", "0")
    return client, gateway, gateway_link


@pytest.mark.netns
@pytest.mark.parametrize("family", ["ipv4", "ipv6", "ipv4-only socket"])
def test_replies_leave_from_the_address_the_peer_wrote_to(netns_hosts: Hosts, family: str) -> None:
    client, gateway, _ = _two_address_hosts(netns_hosts, 81)
    first, second = ("10.81.0.1", "10.81.0.2") if "ipv4" in family else ("fd81::1", "fd81::2")
    bind_host = "0.0.0.0" if family == "ipv4-only socket" else None  # noqa: S104 # all addresses
    with inside(client):
        peer = socket.socket(socket.AF_INET6 if ":" in first else socket.AF_INET, socket.SOCK_DGRAM)
    with inside(gateway), UdpIo(0, bind_host=bind_host) as io, peer:
        peer.bind(("", 0))
        peer.sendto(b"to the second address", (second, io.port))
        [(data, sender)] = _recv_all(io, 1)
        assert data == b"to the second address"
        assert isinstance(sender, StickyEndpoint)
        assert (
            socket.inet_ntop(socket.AF_INET6 if ":" in second else socket.AF_INET, sender.local)
            == second
        )
        # One GSO batch and one single datagram back: both from the second address.
        replies = _payloads(5, 600, 100)
        stats = io.send_batch([(sender, p) for p in replies])
        assert (stats.sent, stats.dropped) == (5, 0)
        assert io.counters.tx_source_fallbacks == 0
        for expected in replies:
            _wait_readable(peer.fileno())
            got, source = peer.recvfrom(2048)
            assert (got, source[0]) == (expected, second)
        # A plain endpoint (from the config or `wg`) leaves from the kernel's choice.
        io.send_batch([((sender[0], sender[1]), b"plain")])
        _wait_readable(peer.fileno())
        got, source = peer.recvfrom(2048)
        assert (got, source[0]) == (b"plain", first)


@pytest.mark.netns
@pytest.mark.parametrize(
    ("removed", "left", "gso"),
    [
        ("10.82.0.2", "10.82.0.1", True),
        ("10.82.0.2", "10.82.0.1", False),
        ("fd82::2", "fd82::1", True),
    ],
)
def test_a_removed_source_address_falls_back_to_the_kernels_choice(
    netns_hosts: Hosts, removed: str, left: str, gso: bool
) -> None:
    client, gateway, link = _two_address_hosts(netns_hosts, 82)
    with inside(client):
        peer = socket.socket(
            socket.AF_INET6 if ":" in removed else socket.AF_INET, socket.SOCK_DGRAM
        )
    with inside(gateway), UdpIo(0, gso=gso) as io, peer:
        peer.bind(("", 0))
        peer.sendto(b"hello", (removed, io.port))
        [(_, sender)] = _recv_all(io, 1)
        gateway.ip("addr", "del", f"{removed}/{64 if ':' in removed else 24}", "dev", link)
        replies = [b"a" * 100, b"b" * 100]
        stats = io.send_batch([(sender, p) for p in replies])
        assert (stats.sent, stats.dropped) == (2, 0)
        assert io.counters.tx_source_fallbacks == (1 if gso else 2)
        for expected in replies:
            _wait_readable(peer.fileno())
            got, source = peer.recvfrom(2048)
            assert (got, source[0]) == (expected, left)
