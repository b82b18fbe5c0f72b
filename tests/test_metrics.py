from __future__ import annotations

import base64
import http.client
import os
import uuid
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway import stats
from gateway.metrics import CONTENT_TYPE, MetricsServer, parse_listen, render
from gateway.stats import StatsRegion, StatsSnapshot

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
def region() -> Iterator[StatsRegion]:
    reg = StatsRegion.create(f"fzo-metrics-{os.getpid()}-{uuid.uuid4().hex[:8]}", workers=1)
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
