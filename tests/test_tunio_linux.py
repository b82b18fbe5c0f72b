"""Multi-queue TUN devices in network namespaces: real kernel, real packets, no mocks."""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
import select
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from testbed import tun_packets
from testbed.netns import Hosts, NetNS, unique_name
from tunio import (
    DeviceExistsError,
    DeviceInUseError,
    NetlinkError,
    Tun,
    TunDeviceManager,
    TunError,
    TunQueue,
    open_multiqueue,
)
from tunio._netns import entered_netns
from tunio.netlink import link_info

pytestmark = pytest.mark.netns

TUN_ADDR = "10.250.0.1"
ROUTED = "10.251.0.0/24"  # routed into the TUN device; Python answers for it
TUNSETPERSIST = 0x400454CB


@dataclass
class TunEnv:
    """A namespace plus every TUN queue the test opens, all closed before the netns goes."""

    hosts: Hosts
    ns: NetNS
    queues: list[TunQueue] = field(default_factory=list)

    def open(self, queues: int, *, name: str | None = None, ns: NetNS | None = None) -> str:
        name = name or unique_name("fzt4tun")
        self.queues.extend(open_multiqueue(name, queues, netns=(ns or self.ns).name))
        return name

    def configured(self, queues: int, *, mtu: int = 1280) -> tuple[str, list[TunQueue]]:
        start = len(self.queues)
        name = self.open(queues)
        manager = TunDeviceManager(name, netns=self.ns.name)
        manager.configure(
            mtu, [ipaddress.IPv4Interface(f"{TUN_ADDR}/24")], [ipaddress.IPv4Network(ROUTED)]
        )
        manager.up()
        return name, self.queues[start:]


@pytest.fixture
def tun_env(netns_hosts: Hosts) -> Iterator[TunEnv]:
    env = TunEnv(netns_hosts, netns_hosts.add("fzt4"))
    try:
        yield env
    finally:
        for queue in env.queues:
            queue.close()


def udp_socket(ns: NetNS) -> socket.socket:
    """A UDP socket inside `ns`, bound to the TUN address."""
    with entered_netns(ns.name):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((TUN_ADDR, 0))
    sock.settimeout(5)
    return sock


def read_one(queues: list[TunQueue], accept: Callable[[bytes], bool], timeout: float = 5) -> int:
    """Index of the queue on which the first packet passing `accept` arrives."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        readable, _, _ = select.select(queues, [], [], deadline - time.monotonic())
        for queue in readable:
            if any(accept(p) for p in queue.recv_many()):
                return queues.index(queue)
    raise TimeoutError("no matching packet arrived on any queue")


def start_ping(ns: NetNS, target: str, count: int) -> subprocess.Popen[bytes]:
    argv = ["ping", "-c", str(count), "-i", "0.2", "-W", "3", target]
    return ns.popen(*argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def answer_pings(queues: list[TunQueue], pings: list[subprocess.Popen[bytes]]) -> int:
    """Answer echo requests from `queues` until every ping exits; replies alternate queues."""
    epoll = select.epoll()
    for queue in queues:
        epoll.register(queue.fileno(), select.EPOLLIN)
    by_fd = {q.fileno(): q for q in queues}
    replies = 0
    deadline = time.monotonic() + 20
    try:
        while any(p.poll() is None for p in pings) and time.monotonic() < deadline:
            for fd, _ in epoll.poll(0.1):
                for packet in by_fd[fd].recv_many():
                    reply = tun_packets.icmp_echo_reply(packet)
                    if reply is not None:
                        assert queues[replies % len(queues)].send(reply)
                        replies += 1
    finally:
        epoll.close()
    return replies


def test_ping_answered_from_python_through_two_queues(tun_env: TunEnv) -> None:
    _, queues = tun_env.configured(2)
    pings = [start_ping(tun_env.ns, f"10.251.0.{host}", count=4) for host in (7, 8, 9)]
    replies = answer_pings(queues, pings)
    for ping in pings:
        out = ping.communicate(timeout=5)[0].decode()
        assert ping.returncode == 0, out
        assert "4 received" in out, out
    assert replies >= 12
    assert sum(q.stats.received for q in queues) >= 12
    assert all(q.stats.sent > 0 for q in queues)  # both queues wrote replies


def _udp_echo_child(queue: TunQueue, stop_fd: int) -> None:
    """Child process: echo UDP packets read from `queue` back through it, tagged with its
    queue index, until `stop_fd` becomes readable."""
    epoll = select.epoll()
    epoll.register(queue.fileno(), select.EPOLLIN)
    epoll.register(stop_fd, select.EPOLLIN)
    while True:
        fds = [fd for fd, _ in epoll.poll(10)]
        if not fds or stop_fd in fds:
            return
        for packet in queue.recv_many():
            reply = tun_packets.udp_echo(packet, trailer=bytes([queue.index]))
            if reply is not None:
                queue.send(reply)


@contextlib.contextmanager
def forked_echo_workers(queues: list[TunQueue]) -> Iterator[None]:
    stop_read, stop_write = os.pipe()
    pids = []
    try:
        for queue in queues:
            pid = os.fork()
            if pid == 0:  # child: never return into pytest
                code = 1
                try:
                    os.close(stop_write)  # only the parent may hold it, or EOF never comes
                    _udp_echo_child(queue, stop_read)
                    code = 0
                finally:
                    os._exit(code)
            pids.append(pid)
        yield
    finally:
        os.close(stop_write)  # EOF makes stop_read readable in every child
        for pid in pids:
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0
        os.close(stop_read)


def test_forked_workers_serve_queues_and_each_flow_stays_on_one_queue(tun_env: TunEnv) -> None:
    _, queues = tun_env.configured(2)
    flows = [udp_socket(tun_env.ns) for _ in range(16)]
    served_by: dict[int, set[int]] = {}
    try:
        with forked_echo_workers(queues):
            for round_ in range(5):
                for flow, sock in enumerate(flows):
                    sock.sendto(f"flow {flow} round {round_}".encode(), ("10.251.0.9", 9999))
                for flow, sock in enumerate(flows):
                    data, _ = sock.recvfrom(2048)
                    assert data[:-1] == f"flow {flow} round {round_}".encode()
                    served_by.setdefault(flow, set()).add(data[-1])
    finally:
        for sock in flows:
            sock.close()
    assert all(len(queue_set) == 1 for queue_set in served_by.values()), served_by
    assert set().union(*served_by.values()) == {0, 1}, "flows did not spread over both queues"


def test_flow_steers_to_the_queue_that_last_wrote_it(tun_env: TunEnv) -> None:
    _, queues = tun_env.configured(2)
    sock = udp_socket(tun_env.ns)
    port = sock.getsockname()[1]
    try:
        for writer in (1, 0, 1):
            # Write one packet of the flow through `writer`, then send the flow's next packet.
            assert queues[writer].send(tun_packets.udp("10.251.0.5", 7777, TUN_ADDR, port, b"in"))
            assert sock.recvfrom(100)[0] == b"in"
            sock.sendto(b"out", ("10.251.0.5", 7777))

            def is_ours(p: bytes) -> bool:
                return (parsed := tun_packets.parse_udp(p)) is not None and parsed[4] == b"out"

            assert read_one(queues, is_ours) == writer
    finally:
        sock.close()


def test_packet_larger_than_mtu_is_accepted_on_write(tun_env: TunEnv) -> None:
    _, (queue,) = tun_env.configured(1, mtu=1280)
    sock = udp_socket(tun_env.ns)
    port = sock.getsockname()[1]
    try:
        payload = bytes(range(256)) * 6  # 1536 + 28 header bytes: beyond 1280 and 1420
        packet = tun_packets.udp("10.251.0.5", 7777, TUN_ADDR, port, payload[: 1420 - 28])
        assert len(packet) == 1420
        assert queue.send(packet)
        assert sock.recvfrom(2048)[0] == payload[: 1420 - 28]
        jumbo = tun_packets.udp("10.251.0.5", 7777, TUN_ADDR, port, payload)
        assert queue.send(jumbo)
        assert sock.recvfrom(2048)[0] == payload
    finally:
        sock.close()


def test_rejected_packets_are_counted_not_raised(tun_env: TunEnv) -> None:
    _, (queue,) = tun_env.configured(1)
    assert isinstance(queue, Tun)
    assert not queue.send(b"")
    assert not queue.send(b"\x10" + bytes(40))  # IP version 1
    assert queue.stats.dropped_rejected == 2
    assert queue.stats.sent == 0


def test_send_ready_tracks_device_state_and_send_buffer(tun_env: TunEnv) -> None:
    name, (queue,) = tun_env.configured(1)
    manager = TunDeviceManager(name, netns=tun_env.ns.name)
    packet = tun_packets.udp("10.251.0.5", 7777, TUN_ADDR, 9, b"x")
    assert queue.send_ready()
    manager.down()
    assert not queue.send_ready()
    assert not queue.send(packet)
    assert queue.stats.dropped_device_down == 1
    manager.up()
    assert queue.send_ready()
    assert queue.send(packet)
    # The kernel reports a queue not writable once in-flight bytes exceed half its send buffer.
    queue.set_send_buffer(1)
    assert not queue.send_ready()
    queue.set_send_buffer(1 << 20)
    assert queue.send_ready()


def test_recv_many_is_bounded_and_empty_when_idle(tun_env: TunEnv) -> None:
    name, (queue,) = tun_env.configured(1)
    # Keep IPv6 router solicitations out of this count, then drain what came before.
    tun_env.ns.run("sysctl", "-qw", f"net.ipv6.conf.{name}.disable_ipv6=1")
    while queue.recv_many():
        pass
    assert queue.recv_many() == []
    sock = udp_socket(tun_env.ns)
    try:
        for i in range(7):
            sock.sendto(bytes([i]), ("10.251.0.5", 7777))
        time.sleep(0.05)  # let the stack route them into the device
        first, rest = queue.recv_many(max_packets=5), queue.recv_many()
    finally:
        sock.close()
    payloads = [p[4] for p in map(tun_packets.parse_udp, first + rest) if p is not None]
    assert len(first) == 5
    assert payloads == [bytes([i]) for i in range(7)]


def test_second_instance_is_refused_while_device_in_use(tun_env: TunEnv) -> None:
    name = tun_env.open(2)
    script = (
        "import sys\nfrom tunio import open_multiqueue, DeviceInUseError\n"
        "try:\n    open_multiqueue(sys.argv[1], 1, netns=sys.argv[2])\n"
        "except DeviceInUseError as e:\n    print(e)\n    sys.exit(3)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, name, tun_env.ns.name],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert proc.returncode == 3, proc.stderr
    assert f"TUN device {name} in netns {tun_env.ns.name} is in use" in proc.stdout
    assert str(os.getpid()) in proc.stdout  # names the holder
    assert "2 queues attached" in proc.stdout
    # The same refusal in-process, and our queues were not disturbed.
    with pytest.raises(DeviceInUseError, match=name):
        open_multiqueue(name, 1, netns=tun_env.ns.name)
    info = link_info(name, netns=tun_env.ns.name)
    assert info is not None
    assert info.attached_queues == 2


def test_stale_device_of_our_own_is_recreated(tun_env: TunEnv) -> None:
    name = unique_name("fzt4tun")
    (old,) = open_multiqueue(name, 1, netns=tun_env.ns.name)
    fcntl.ioctl(old.fileno(), TUNSETPERSIST, struct.pack("i", 1))  # as if a crash left it
    old_index = link_info(name, netns=tun_env.ns.name)
    old.close()
    stale = link_info(name, netns=tun_env.ns.name)
    assert stale is not None
    assert stale.attached_queues == 0
    tun_env.open(2, name=name)
    fresh = link_info(name, netns=tun_env.ns.name)
    assert fresh is not None
    assert old_index is not None
    assert fresh.ifindex != old_index.ifindex
    assert fresh.attached_queues == 2
    for queue in tun_env.queues:
        queue.close()
    assert link_info(name, netns=tun_env.ns.name) is None  # not persistent any more


def test_an_idle_tun_device_of_another_owner_is_not_ours(tun_env: TunEnv) -> None:
    name = unique_name("fzt4tun")
    other_uid = os.geteuid() + 4242
    tun_env.ns.ip(
        "tuntap", "add", "dev", name, "mode", "tun", "multi_queue", "user", str(other_uid)
    )
    with pytest.raises(
        DeviceExistsError, match=f"not created by firezone-gw .owner uid {other_uid}"
    ):
        open_multiqueue(name, 1, netns=tun_env.ns.name)
    info = link_info(name, netns=tun_env.ns.name)
    assert info is not None  # left alone
    assert info.owner == other_uid


def test_foreign_devices_with_our_name_are_refused(tun_env: TunEnv) -> None:
    tuntap, veth = unique_name("fzt4tun"), unique_name("fzt4veth")
    tun_env.ns.ip("tuntap", "add", "dev", tuntap, "mode", "tun", "multi_queue")
    tun_env.ns.ip("link", "add", veth, "type", "veth", "peer", "name", unique_name("fzt4peer"))
    with pytest.raises(DeviceExistsError, match=f"{tuntap}.*not created by firezone-gw"):
        open_multiqueue(tuntap, 1, netns=tun_env.ns.name)
    with pytest.raises(DeviceExistsError, match=f"{veth} in netns {tun_env.ns.name}: a veth"):
        open_multiqueue(veth, 1, netns=tun_env.ns.name)
    assert link_info(tuntap, netns=tun_env.ns.name) is not None  # left alone


def test_device_moved_to_another_netns_keeps_its_queues(tun_env: TunEnv) -> None:
    name, queues = tun_env.configured(2)
    other = tun_env.hosts.add("fzt4")
    manager = TunDeviceManager(name, netns=tun_env.ns.name)
    manager.move_to_netns(other.name)
    assert not TunDeviceManager(name, netns=tun_env.ns.name).exists()
    manager.configure(
        1280, [ipaddress.IPv4Interface(f"{TUN_ADDR}/24")], [ipaddress.IPv4Network(ROUTED)]
    )
    manager.up()
    pinger = start_ping(other, "10.251.0.7", count=3)
    assert answer_pings(queues, [pinger]) >= 3
    out = pinger.communicate(timeout=5)[0].decode()
    assert pinger.returncode == 0, out
    # Moving it where the name is taken is a kernel error, reported with operation and names.
    clash = tun_env.hosts.add("fzt4")
    clash.ip("link", "add", name, "type", "veth", "peer", "name", unique_name("fzt4peer"))
    with pytest.raises(NetlinkError, match=f"moving {name} in netns {other.name} to netns"):
        manager.move_to_netns(clash.name)


def test_queue_fd_passed_over_unix_socket_works(tun_env: TunEnv) -> None:
    name, (queue,) = tun_env.configured(1)
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    sock = udp_socket(tun_env.ns)
    try:
        socket.send_fds(left, [b"q"], [queue.fileno()])
        _, (fd,), _, _ = socket.recv_fds(right, 1, 1)
        received = TunQueue.from_fd(fd, name, 0)
        tun_env.queues.append(received)
        packet = tun_packets.udp("10.251.0.5", 7777, TUN_ADDR, sock.getsockname()[1], b"fd")
        assert received.send(packet)
        assert sock.recvfrom(100)[0] == b"fd"
    finally:
        for s in (left, right, sock):
            s.close()


@pytest.mark.parametrize(("name", "queues"), [("fzt4ok", 0), ("fzt4ok", 257), ("a/b", 1), ("", 1)])
def test_bad_arguments_are_refused_before_touching_the_kernel(name: str, queues: int) -> None:
    with pytest.raises(TunError, match=r"queue count|invalid interface name"):
        open_multiqueue(name, queues)
