"""End to end: real wireguard-go clients -> the real `firezone-gw` process -> a resource.

Namespaces, clients and the gateway come from testbed/topology.py, the topology the network
benchmark measures, so what is tested here is what is measured there. Timing asserts are
about availability (traffic resumes within 2 s, SIGTERM exits within 2 s), never about speed.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from gateway.telemetry.runtime_dir import runtime_dir
from testbed.addresses import RESOURCE_ADDR, RESOURCE_ADDR6, ClientOptions
from testbed.gateways import FirezoneGateway
from testbed.iperf import IperfResult, run_iperf
from testbed.netns import WIREGUARD_RUN_DIR, Hosts, NetNS, wait_for
from testbed.topology import Topology, topology

pytestmark = pytest.mark.netns

UDP_TOOL = str(Path(__file__).with_name("e2e_udp.py"))
ECHO_PORT = 7777
RESUME_LIMIT = 2.0  # seconds: the bound for traffic to come back after a restart
IPERF_SECONDS = 2
MAX_UDP_LOSS_PERCENT = 5.0


# --- helpers ---------------------------------------------------------------------------


def iperf(
    topo: Topology[FirezoneGateway], clients: list[int], args: list[str]
) -> list[IperfResult]:
    topo.wait_iperf_idle()
    return run_iperf(topo, clients, args, IPERF_SECONDS, udp="-u" in args)


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`; 0 if there is none."""
    total = 0.0
    for line in text.splitlines():
        match = re.fullmatch(rf"{re.escape(name)}(?:\{{(.*)\}})? (\S+)", line)
        if match is None:
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(match.group(2))
    return total


def wait_metric(gw: FirezoneGateway, name: str, above: float, **labels: str) -> float:
    """Wait until the metric exceeds `above` (counters reach shared memory about once a s)."""
    value = [0.0]

    def moved() -> bool:
        value[0] = metric(gw.metrics_text(), name, **labels)
        return value[0] > above

    wait_for(moved, timeout=5, interval=0.2)
    return value[0]


def drops(gw: FirezoneGateway, reason: str) -> float:
    return metric(gw.metrics_text(), "firezone_gw_drops_total", reason=reason)


def ping_from(ns: NetNS, dest: str, count: int = 3) -> bool:
    argv = ns.exec_argv("ping", "-c", str(count), "-i", "0.2", "-W", "1", "-q", dest)
    return subprocess.run(argv, capture_output=True, check=False, timeout=30).returncode == 0


@contextlib.contextmanager
def echo_server(topo: Topology[FirezoneGateway], bind: str = RESOURCE_ADDR) -> Iterator[None]:
    proc = topo.resource.popen(
        sys.executable, UDP_TOOL, "server", "--bind", bind, "--port", str(ECHO_PORT)
    )
    wait_for(lambda: f":{ECHO_PORT} " in topo.resource.run("ss", "-Hlun"), timeout=10)
    try:
        yield
    finally:
        proc.kill()
        proc.wait(5)


def start_probe(
    topo: Topology[FirezoneGateway], seconds: float, *, stop_after_outage: float | None = None
) -> subprocess.Popen[bytes]:
    argv = topo.client_ns(0).exec_argv(
        sys.executable, UDP_TOOL, "probe", "--dest", RESOURCE_ADDR,
        "--port", str(ECHO_PORT), "--seconds", str(seconds),
    )  # fmt: skip
    if stop_after_outage is not None:
        argv += ["--stop-after-outage", str(stop_after_outage)]
    return subprocess.Popen(argv, stdout=subprocess.PIPE)


def probe_result(proc: subprocess.Popen[bytes]) -> dict[str, object]:
    out, _ = proc.communicate(timeout=60)
    result: dict[str, object] = json.loads(out)
    return result


def longest_gap(result: dict[str, object]) -> float:
    """Longest time without an echo, edges of the probe window included."""
    replies = result["replies"]
    assert isinstance(replies, list)
    start, end = result["start"], result["end"]
    assert isinstance(start, float) and isinstance(end, float)
    times = [start, *replies, end]
    return float(max(b - a for a, b in itertools.pairwise(times)))


def role_pids(gw: FirezoneGateway) -> dict[str, int]:
    """Children by role; empty while the stats region is not (or no longer) there."""
    try:
        return gw.role_pids()
    except (FileNotFoundError, ValueError):  # not created yet, or header not written yet
        return {}


def kill_and_wait_restart(gw: FirezoneGateway, role: str) -> int:
    """SIGKILL the child playing `role`; return once its replacement has attached."""
    old = gw.role_pids()[role]
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: role_pids(gw).get(role, 0) not in (0, old), timeout=5)
    return old


# --- handshakes, IPv4/IPv6, allowed IPs, unknown key ------------------------------------

SPOOFED = ("10.77.0.200", "fd00:77::c8")


def test_ping_handshakes_spoofing_and_unknown_key() -> None:
    options = [
        ClientOptions(),  # 0: initiates itself
        ClientOptions(gateway_knows_endpoint=True, wait_ready=False),  # 1: gateway initiates
        ClientOptions(source_addrs=SPOOFED, wait_ready=False),  # 2: outside its allowed IPs
        ClientOptions(known_to_gateway=False, wait_ready=False),  # 3: key unknown to gateway
    ]
    backend = FirezoneGateway(2)
    with topology(backend, clients=4, client_options=options, iperf=False) as topo:
        gw = topo.backend
        # Client-initiated (topology waited for client 0's handshake): IPv4 and IPv6.
        assert topo.ping(0, count=3, dest=RESOURCE_ADDR)
        assert topo.ping(0, count=3, dest=RESOURCE_ADDR6)
        assert topo.clients[0].peers()[gw.public_key].latest_handshake > 0

        # Gateway-initiated: client 1 has sent nothing; the resource pings its tunnel address.
        client1, spec1 = topo.clients[1], topo.client_specs[1]
        assert client1.peers()[gw.public_key].latest_handshake == 0
        initiations = metric(gw.metrics_text(), "firezone_gw_handshake_initiations_sent_total")
        assert ping_from(topo.resource, spec1.tunnel_addr, count=5)
        assert ping_from(topo.resource, spec1.tunnel_addr6, count=3)
        assert client1.peers()[gw.public_key].latest_handshake > 0
        assert "Received handshake initiation" in client1.log()
        wait_metric(gw, "firezone_gw_handshake_initiations_sent_total", initiations)

        # Spoofed inner source: the handshake works, the packets are dropped and counted.
        spoofed_before = drops(gw, "allowed_ips")
        assert not topo.ping(2, count=3, dest=RESOURCE_ADDR)
        assert not topo.ping(2, count=2, dest=RESOURCE_ADDR6)
        assert topo.clients[2].peers()[gw.public_key].latest_handshake > 0
        assert wait_metric(gw, "firezone_gw_drops_total", spoofed_before, reason="allowed_ips")

        # Unknown key: the gateway never answers, so the client receives nothing at all.
        udp_rx_before = metric(
            gw.metrics_text(), "firezone_gw_udp_packets_total", direction="receive"
        )
        rejected_before = metric(gw.metrics_text(), "firezone_gw_handshakes_rejected_total")
        assert not topo.ping(3, count=3, dest=RESOURCE_ADDR)
        wait_metric(gw, "firezone_gw_udp_packets_total", udp_rx_before, direction="receive")
        wait_metric(gw, "firezone_gw_handshakes_rejected_total", rejected_before)
        peer3 = topo.clients[3].peers()[gw.public_key]
        assert peer3.latest_handshake == 0
        assert peer3.rx_bytes == 0
        assert peer3.tx_bytes > 0


# --- throughput with 1, 2, 4 workers; two clients; MTU 1420 ------------------------------


@pytest.mark.parametrize("workers", [1, 2, 4])
def test_iperf_two_clients_tcp_both_ways_and_udp(workers: int) -> None:
    options = [ClientOptions(), ClientOptions(mtu=1420)]
    with topology(FirezoneGateway(workers), clients=2, client_options=options) as topo:
        gw = topo.backend
        keys = {c.public_key for c in topo.clients}
        assert len(keys) == 2
        # First, before any download teaches the resource a path MTU of 1280 towards the
        # clients (it would then advertise a smaller MSS): client 1 at MTU 1420 uploads
        # full-size TCP segments, 1420-byte packets, which must be forwarded.
        text = gw.metrics_text()
        packets = metric(text, "firezone_gw_tun_packets_total", direction="transmit")
        volume = metric(text, "firezone_gw_tun_bytes_total", direction="transmit")
        (upload,) = iperf(topo, [1], [])
        assert upload.bytes > 0
        wait_metric(gw, "firezone_gw_tun_packets_total", packets, direction="transmit")
        time.sleep(1.2)  # the crypto process copies counters about once a second
        text = gw.metrics_text()
        sent = metric(text, "firezone_gw_tun_packets_total", direction="transmit") - packets
        size = (metric(text, "firezone_gw_tun_bytes_total", direction="transmit") - volume) / sent
        # TCP upload is nearly all full-size segments; anything clamped to 1280 would show.
        assert size > 1300, size

        # Both clients at once: TCP upload, download, then UDP.
        for args in ([], ["-R"]):
            results = iperf(topo, [0, 1], args)
            assert all(r.bytes > 0 for r in results), (args, results, gw.describe_failure())
        udp = iperf(topo, [0, 1], ["-u", "-b", "10M"])
        for r in udp:
            assert r.bytes > 0
            assert r.lost_percent < MAX_UDP_LOSS_PERCENT, udp


# --- one shared gateway (workers=2): ordering, restarts, SIGTERM -------------------------


@pytest.fixture(scope="module")
def shared() -> Iterator[Topology[FirezoneGateway]]:
    with topology(FirezoneGateway(2), clients=1, iperf=True) as topo, echo_server(topo):
        yield topo


def test_numbered_udp_stream_keeps_order_both_ways(shared: Topology[FirezoneGateway]) -> None:
    argv = shared.client_ns(0).exec_argv(
        sys.executable, UDP_TOOL, "order", "--dest", RESOURCE_ADDR,
        "--port", str(ECHO_PORT), "--count", "5000", "--flows", "4",
    )  # fmt: skip
    flows = json.loads(subprocess.run(argv, capture_output=True, check=True, timeout=60).stdout)
    assert len(flows) == 4
    for flow in flows:
        server = flow["server"]
        assert server is not None, flows
        assert server["received"] >= 0.9 * flow["sent"], flows
        assert server["inversions"] == 0, flows
        assert flow["returned"] >= 0.9 * flow["sent"], flows
        assert flow["returned_inversions"] == 0, flows


def test_worker_and_udp_restarts_keep_sessions_and_traffic(
    shared: Topology[FirezoneGateway],
) -> None:
    gw = shared.backend
    client = shared.clients[0]
    handshake = client.peers()[gw.public_key].latest_handshake
    completed = metric(gw.metrics_text(), "firezone_gw_handshakes_completed_total")
    shared.wait_iperf_idle()
    transfer = subprocess.Popen(
        [*shared.client_ns(0).exec_argv("iperf3", "-c", RESOURCE_ADDR, "-p"),
         str(shared.client_specs[0].iperf_port), "-u", "-b", "10M", "-t", "8"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    probe = start_probe(shared, seconds=8)
    try:
        time.sleep(1)
        for role in [*(f"worker{i}" for i in range(gw.workers)), "udp"]:
            kill_and_wait_restart(gw, role)
            time.sleep(1.5)
        result = probe_result(probe)
    finally:
        transfer.kill()
        transfer.wait(10)
    gap = longest_gap(result)
    print(f"worker/UDP restarts: longest echo gap {gap:.2f} s")
    assert gap < RESUME_LIMIT, (gap, gw.describe_failure())
    # Sessions survived: no new handshake on either side.
    assert client.peers()[gw.public_key].latest_handshake == handshake
    assert metric(gw.metrics_text(), "firezone_gw_handshakes_completed_total") == completed
    assert metric(gw.metrics_text(), "firezone_gw_child_restarts_total") >= gw.workers + 1


def test_crypto_restart_keeps_the_clients_session(shared: Topology[FirezoneGateway]) -> None:
    gw = shared.backend
    client = shared.clients[0]
    handshake = client.peers()[gw.public_key].latest_handshake
    probe = start_probe(shared, seconds=30, stop_after_outage=1.0)
    time.sleep(0.5)
    killed_at = time.monotonic()
    kill_and_wait_restart(gw, "crypto")
    result = probe_result(probe)
    replies = result["replies"]
    assert isinstance(replies, list)
    after = [t for t in replies if t > killed_at + 0.2]
    assert after, gw.describe_failure()
    print(f"crypto restart: echoes resumed {after[0] - killed_at:.1f} s after the kill")
    # The successor continues the session (issue 22): no new handshake, no 15 s wait for
    # wireguard-go's timers.
    assert after[0] - killed_at <= 1.0
    assert client.peers()[gw.public_key].latest_handshake == handshake
    assert ping_from(shared.client_ns(0), RESOURCE_ADDR)


def test_sigterm_stops_everything_within_two_seconds(shared: Topology[FirezoneGateway]) -> None:
    gw = shared.backend
    assert gw.proc is not None
    assert gw.ns is not None
    children = [psutil.Process(pid) for pid in gw.role_pids().values()]
    segments = sorted(p.name for p in runtime_dir().glob(f"fzgw.{gw.ifname}.*"))
    assert segments  # the stats segment exists while running (rings have no name)
    sent = time.monotonic()
    gw.proc.send_signal(signal.SIGTERM)
    code = gw.proc.wait(5)
    took = time.monotonic() - sent
    assert took < 2.0, took
    assert code == 0
    assert gw.ifname not in gw.ns.ip("-o", "link", "show")
    assert not list(runtime_dir().glob(f"fzgw.{gw.ifname}.*"))
    assert not (WIREGUARD_RUN_DIR / f"{gw.ifname}.sock").exists()
    assert not [c.pid for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]


# --- start-up ------------------------------------------------------------------------


def test_sigterm_during_startup_leaves_nothing_behind(netns_hosts: Hosts) -> None:
    """SIGTERM as soon as the stats segment exists (start-up is still under way)."""
    ns = netns_hosts.add("fzegw")
    gw = FirezoneGateway(4)
    gw.start(ns, [])
    assert gw.proc is not None
    pattern = f"fzgw.{gw.ifname}.*"
    try:
        deadline = time.monotonic() + 15
        while not list(runtime_dir().glob(pattern)) and time.monotonic() < deadline:
            time.sleep(0.001)  # a tight poll: the window between segments and handlers is short
        gw.proc.send_signal(signal.SIGTERM)
        gw.proc.wait(5)
        assert not list(runtime_dir().glob(pattern)), gw.describe_failure()
        assert gw.ifname not in ns.ip("-o", "link", "show")
        assert not (WIREGUARD_RUN_DIR / f"{gw.ifname}.sock").exists()
    finally:
        for leftover in runtime_dir().glob(pattern):  # ours: the name is unique to this run
            leftover.unlink()
        gw.close()
