from __future__ import annotations

import base64
import contextlib
import http.client
import os
import re
import select
import socket
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.telemetry import stats
from gateway.telemetry.metrics import CONTENT_TYPE, MetricsServer, parse_listen, render
from gateway.telemetry.stats import StatsRegion, StatsSnapshot
from testbed.netns import wait_for

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
def region() -> Iterator[StatsRegion]:
    name = f"fzo-metrics-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    reg = StatsRegion.create(name, workers=1, dns=True)
    try:
        yield reg
    finally:
        reg.close()
        reg.unlink()


class Ready:
    def __init__(self) -> None:
        self.state = (False, "TUN device fzo0 is down\nand more")

    def __call__(self) -> tuple[bool, str]:
        return self.state


@pytest.fixture
def server(region: StatsRegion) -> Iterator[tuple[MetricsServer, Ready]]:
    ready = Ready()
    srv = MetricsServer(("127.0.0.1", 0), snapshot=region.snapshot, ready=ready, device="fzo0")
    srv.start()
    try:
        yield srv, ready
    finally:
        srv.close()


def _get(srv: MetricsServer, path: str) -> tuple[int, str, str]:
    host, port = srv.address
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type", ""), resp.read().decode()
    finally:
        conn.close()


def _scrape(srv: MetricsServer) -> tuple[Samples, dict[str, str]]:
    status, content_type, text = _get(srv, "/metrics")
    assert status == 200
    assert content_type == CONTENT_TYPE
    samples: Samples = {}
    types: dict[str, str] = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        assert family.documentation
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples, types


def test_counters_move_between_scrapes(
    region: StatsRegion, server: tuple[MetricsServer, Ready]
) -> None:
    srv, _ = server
    udp = region.attach_process("udp")
    crypto = region.attach_process("crypto")
    key = bytes(range(32))
    slot = region.peers.assign(key)
    assert slot is not None
    region.peers.set_endpoint(slot, '198.51.100.7:51820 "odd"\\')
    region.ring_block("crypto_to_udp")[stats.RING_CAPACITY] = 1000

    before, types = _scrape(srv)
    b64 = base64.b64encode(key).decode()
    peer_labels = (("device", "fzo0"), ("public_key", b64))
    assert before[("wireguard_peer_receive_bytes_total", peer_labels)] == 0
    assert before[("firezone_gw_udp_packets_total", (("direction", "receive"),))] == 0
    assert types["wireguard_peer_receive_bytes"] == "counter"
    assert types["wireguard_peer_last_handshake_seconds"] == "gauge"
    assert types["firezone_gw_crypto_busy_ratio"] == "gauge"
    info = (("device", "fzo0"), ("endpoint", '198.51.100.7:51820 "odd"\\'), ("public_key", b64))
    assert before[("wireguard_peer_info", info)] == 1

    # traffic as the data plane counts it
    udp[stats.UDP_RX_PACKETS] += 3
    udp[stats.UDP_RX_BYTES] += 3 * 148
    udp[stats.GSO_BATCHES] += 2
    udp[stats.GSO_SEGMENTS] += 10
    crypto[stats.HANDSHAKES_COMPLETED] += 1
    crypto[stats.DROP_REPLAY] += 4
    base = region.peers.base(slot)
    region.peers.words[base + stats.PEER_RX_BYTES] += 1000
    region.peers.words[base + stats.PEER_TX_BYTES] += 2000
    region.peers.set_last_handshake(slot, 1_700_000_000 * 10**9)
    region.ring_block("crypto_to_udp")[stats.RING_FULL_EVENTS] += 5

    after, _ = _scrape(srv)
    assert after[("wireguard_peer_receive_bytes_total", peer_labels)] == 1000
    assert after[("wireguard_peer_transmit_bytes_total", peer_labels)] == 2000
    assert after[("wireguard_peer_last_handshake_seconds", peer_labels)] == 1_700_000_000
    assert after[("firezone_gw_udp_packets_total", (("direction", "receive"),))] == 3
    assert after[("firezone_gw_udp_bytes_total", (("direction", "receive"),))] == 444
    assert after[("firezone_gw_gso_batch_segments_average", ())] == 5
    assert after[("firezone_gw_handshakes_completed_total", ())] == 1
    assert after[("firezone_gw_drops_total", (("reason", "replay"),))] == 4
    assert after[("firezone_gw_ring_full_events_total", (("ring", "crypto_to_udp"),))] == 5
    assert after[("firezone_gw_ring_capacity_packets", (("ring", "crypto_to_udp"),))] == 1000
    # this test process attached as udp and crypto, so psutil finds it
    assert after[("firezone_gw_process_resident_memory_bytes", (("process", "udp"),))] > 0
    assert ("firezone_gw_process_cpu_seconds_total", (("process", "crypto"),)) in after
    busy = after[("firezone_gw_crypto_busy_ratio", ())]
    assert 0 <= busy <= 1


def test_health_and_readiness(server: tuple[MetricsServer, Ready]) -> None:
    srv, ready = server
    assert _get(srv, "/healthz")[:1] == (200,)
    status, _, body = _get(srv, "/readyz")
    assert (status, body) == (503, "TUN device fzo0 is down and more\n")
    ready.state = (True, "")
    assert _get(srv, "/readyz")[0::2] == (200, "ready\n")
    assert _get(srv, "/nope")[0] == 404


def test_failing_callbacks_do_not_kill_the_server(region: StatsRegion) -> None:
    def broken_snapshot() -> StatsSnapshot:
        raise RuntimeError("boom")

    def broken_ready() -> tuple[bool, str]:
        raise RuntimeError("probe exploded")

    srv = MetricsServer(
        ("127.0.0.1", 0), snapshot=broken_snapshot, ready=broken_ready, device="fzo0"
    )
    srv.start()
    try:
        assert _get(srv, "/metrics")[0] == 500
        status, _, body = _get(srv, "/readyz")
        assert status == 503
        assert "probe exploded" in body
        assert _get(srv, "/healthz")[0] == 200
    finally:
        srv.close()


def test_ipv6_listen(region: StatsRegion) -> None:
    srv = MetricsServer(
        parse_listen("[::1]:0"), snapshot=region.snapshot, ready=lambda: (True, ""), device="d"
    )
    srv.start()
    try:
        samples, _ = _scrape(srv)
        assert ("firezone_gw_child_restarts_total", ()) in samples
    finally:
        srv.close()


def test_render_every_family_has_help_and_type(region: StatsRegion) -> None:
    text = render(region.snapshot(sample_processes=False), device="fzo0")
    names = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")}
    helps = {line.split()[2] for line in text.splitlines() if line.startswith("# HELP")}
    assert names == helps
    counters = [
        line.split()[2]
        for line in text.splitlines()
        if line.startswith("# TYPE") and line.endswith("counter")
    ]
    assert counters
    assert all(name.endswith("_total") for name in counters)


def test_dns_counters_reach_metrics_once_the_dns_process_runs(region: StatsRegion) -> None:
    assert "firezone_gw_dns_" not in render(region.snapshot(sample_processes=False), device="x")
    block = region.attach_process("dns")
    block[stats.DNS_BASE + stats.DNS_COUNTER_NAMES.index("queries")] = 5
    block[stats.DNS_BASE + stats.DNS_COUNTER_NAMES.index("servfail_timeout")] = 2
    block[stats.DNS_BASE + stats.DNS_COUNTER_NAMES.index("in_flight")] = 1
    text = render(region.snapshot(sample_processes=False), device="x")
    assert "firezone_gw_dns_queries_total 5" in text
    assert 'firezone_gw_dns_servfail_total{reason="timeout"} 2' in text
    assert "firezone_gw_dns_in_flight 1" in text
    assert "# TYPE firezone_gw_dns_in_flight gauge" in text


def test_tun_mtu_is_reported_once_known(region: StatsRegion) -> None:
    def mtu_samples() -> list[float]:
        text = render(region.snapshot(sample_processes=False), device="fzo0")
        return [
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == "firezone_gw_tun_mtu_bytes"
        ]

    assert mtu_samples() == []  # 0: the supervisor has not written it yet
    region.mtu = 1280
    assert mtu_samples() == [1280]
    region.mtu = 9000  # as the supervisor does when `ip link` changed it
    assert mtu_samples() == [9000]


def test_the_per_packet_path_is_reported_once_the_crypto_process_set_it(
    region: StatsRegion,
) -> None:
    def backends() -> list[str]:
        text = render(region.snapshot(sample_processes=False), device="fzo0")
        return [
            sample.labels["backend"]
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == "firezone_gw_transport_info"
        ]

    assert backends() == []
    for name in ("python", "native"):
        region.transport = name
        assert backends() == [name]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:9586", ("127.0.0.1", 9586)),
        ("[::1]:80", ("::1", 80)),
        ("localhost:9586", ("127.0.0.1", 9586)),  # resolved, like the config's metrics.listen
    ],
)
def test_parse_listen(text: str, expected: tuple[str, int]) -> None:
    assert parse_listen(text) == expected


@pytest.mark.parametrize("text", ["[fe80::1%lo]:9586", "127.0.0.1", "1.2.3.4:70000", "1.2.3.4:x"])
def test_parse_listen_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="metrics listen"):
        parse_listen(text)


# ---- the server under slow, idle, too many and bad clients -------------------------------


def _connect(srv: MetricsServer) -> socket.socket:
    return socket.create_connection(srv.address, timeout=10)


def _closed_by_server(sock: socket.socket, wait: float) -> bool:
    """Whether the server hangs up on `sock` within `wait` seconds (EOF or reset)."""
    readable, _, _ = select.select([sock], [], [], wait)
    if not readable:
        return False
    try:
        return sock.recv(65536) == b""
    except ConnectionResetError:
        return True


class Trickler:
    """A client sending one byte of an endless request every `interval` seconds."""

    def __init__(self, srv: MetricsServer, interval: float) -> None:
        self.sock = _connect(srv)
        self.interval = interval
        self.sent = 0
        self.hung_up_after: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        start = time.monotonic()
        data = b"GET /metrics HTTP/1.0\r\nX-Slow: " + b"a" * 100_000
        while not self._stop.is_set():
            try:
                self.sock.send(data[self.sent : self.sent + 1])
            except OSError:
                self.hung_up_after = time.monotonic() - start
                return
            self.sent += 1
            if _closed_by_server(self.sock, self.interval):
                self.hung_up_after = time.monotonic() - start
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.sock.close()


def test_trickling_and_idle_clients_do_not_delay_readyz(
    server: tuple[MetricsServer, Ready],
) -> None:
    srv, ready = server
    ready.state = (True, "")
    idle = [_connect(srv) for _ in range(5)]
    tricklers = [Trickler(srv, 0.5), Trickler(srv, 4.0)]
    try:
        for _ in range(3):
            time.sleep(0.5)
            host, port = srv.address
            conn = http.client.HTTPConnection(host, port, timeout=1.0)
            try:
                conn.request("GET", "/readyz")
                assert conn.getresponse().status == 200
            finally:
                conn.close()
        assert all(t.hung_up_after is None for t in tricklers)  # still served, not refused
    finally:
        for t in tricklers:
            t.stop()
        for sock in idle:
            sock.close()


def test_a_request_gets_one_deadline_however_its_bytes_trickle_in(region: StatsRegion) -> None:
    srv = MetricsServer(
        ("127.0.0.1", 0),
        snapshot=region.snapshot,
        ready=lambda: (True, ""),
        device="fzo0",
        request_deadline=1.0,
    )
    srv.start()
    trickler = Trickler(srv, 0.2)
    idle = _connect(srv)
    try:
        # Each byte comes well within any per-read timeout; only a whole-request deadline
        # ends this connection. Waiting far longer than the deadline is a bound, not a speed.
        assert _closed_by_server(idle, 10)
        wait_for(lambda: trickler.hung_up_after is not None, timeout=10)
        assert trickler.sent >= 3
        assert _get(srv, "/healthz")[0] == 200
    finally:
        trickler.stop()
        idle.close()
        srv.close()


def test_connections_beyond_the_cap_are_closed_and_counted(region: StatsRegion) -> None:
    srv = MetricsServer(
        ("127.0.0.1", 0),
        snapshot=region.snapshot,
        ready=lambda: (True, ""),
        device="fzo0",
        max_connections=3,
        request_deadline=60,
    )
    srv.start()
    idle = [_connect(srv) for _ in range(3)]
    extra = _connect(srv)
    try:
        assert _closed_by_server(extra, 10)
        assert srv.refused_connections == 1
        for sock in idle:
            assert not _closed_by_server(sock, 0)
            sock.close()
        # Once the idle clients are gone, their slots are free again (wait for the server to
        # see them go first: an early poll would be refused, and counted, too).
        wait_for(lambda: srv.open_connections == 0, timeout=10)
        assert _get_or_none(srv, "/readyz") == 200
        samples, _ = _scrape(srv)
        assert samples[("firezone_gw_metrics_connections_refused_total", ())] == 1
    finally:
        extra.close()
        for sock in idle:
            sock.close()
        srv.close()


def _get_or_none(srv: MetricsServer, path: str) -> int | None:
    try:
        return _get(srv, path)[0]
    except (OSError, http.client.HTTPException):
        return None


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"\x00\xff\x16\x03\x01garbage\r\n\r\n",  # a TLS client hello or line noise
        b"GET\r\n\r\n",
        b"GET /metrics HTTP/9.9\r\n\r\n",
        b"GET /metrics HTTP/1.0\r\n" + b"X: y\r\n" * 200 + b"\r\n",  # too many headers
        b"GET /" + b"a" * 70_000 + b" HTTP/1.0\r\n\r\n",  # longer than the server reads
        b"GET /metrics HTT",  # cut off
    ],
)
def test_bad_requests_get_an_error_or_a_hang_up_and_the_server_lives_on(
    server: tuple[MetricsServer, Ready], request_bytes: bytes
) -> None:
    srv, _ = server
    with _connect(srv) as sock:
        with contextlib.suppress(OSError):  # the server may hang up before reading it all
            sock.sendall(request_bytes)
            sock.shutdown(socket.SHUT_WR)
        reply = b""
        with contextlib.suppress(OSError):
            while chunk := sock.recv(65536):
                reply += chunk
    # An error status, a bare error page (HTTP/0.9 style, for a request line without a
    # version) or a hang-up; never an answer.
    assert re.match(rb"(HTTP/1\.0 [45]\d\d |<!DOCTYPE HTML>|$)", reply), reply[:100]
    assert _get(srv, "/healthz")[0] == 200


def test_close_does_not_wait_for_clients(region: StatsRegion) -> None:
    srv = MetricsServer(
        ("127.0.0.1", 0),
        snapshot=region.snapshot,
        ready=lambda: (True, ""),
        device="fzo0",
        request_deadline=60,
    )
    srv.start()
    idle = [_connect(srv) for _ in range(3)]
    try:
        wait_for(lambda: srv.open_connections == 3, timeout=10)
        closer = threading.Thread(target=srv.close)
        closer.start()
        closer.join(timeout=10)  # without the hang-up it would wait out the 60 s deadline
        assert not closer.is_alive()
        assert all(_closed_by_server(sock, 10) for sock in idle)
    finally:
        for sock in idle:
            sock.close()


def test_nat_counters_of_the_crypto_process_reach_metrics(region: StatsRegion) -> None:
    block = region.attach_process("crypto")
    block[stats.NAT_BASE + stats.NAT_COUNTER_NAMES.index("translated_out")] = 9
    block[stats.NAT_BASE + stats.NAT_COUNTER_NAMES.index("entries")] = 3
    text = render(region.snapshot(sample_processes=False), device="x")
    assert "firezone_gw_nat_translated_out_total 9" in text
    assert "firezone_gw_nat_entries 3" in text
    assert "# TYPE firezone_gw_nat_entries gauge" in text
