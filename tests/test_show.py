from __future__ import annotations

import base64
import contextlib
import json
import os
import subprocess
import uuid

import pytest

from gateway.telemetry import stats
from gateway.telemetry.show import (
    find_stats_segment,
    format_ago,
    format_bytes,
    format_table,
    stats_segment_name,
    to_json,
)
from gateway.telemetry.stats import StatsRegion


@pytest.mark.parametrize(
    ("count", "text"),
    [(0, "0 B"), (1023, "1023 B"), (1536, "1.50 KiB"), (5 * 2**30, "5.00 GiB")],
)
def test_format_bytes(count: int, text: str) -> None:
    assert format_bytes(count) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.4, "Now"), (1, "1 second ago"), (65, "1 minute, 5 seconds ago"), (7200, "2 hours ago")],
)
def test_format_ago(seconds: float, text: str) -> None:
    assert format_ago(seconds) == text


def test_table_and_json_from_shared_counters() -> None:
    region = StatsRegion.create(f"fzo-show-{os.getpid()}-{uuid.uuid4().hex[:8]}", workers=1)
    try:
        udp = region.attach_process("udp")
        udp[stats.UDP_RX_BYTES] += 2048
        old, new = b"\x01" * 32, b"\x02" * 32
        for key, handshake_age in ((old, 600), (new, 5)):
            slot = region.peers.assign(key)
            assert slot is not None
            region.peers.set_endpoint(slot, "192.0.2.1:51820")
            region.peers.words[region.peers.base(slot) + stats.PEER_RX_BYTES] += 1536
            wall = region.snapshot(sample_processes=False).taken_at - handshake_age
            region.peers.set_last_handshake(slot, int(wall * 1e9))
        assert "mtu:" not in format_table(region.snapshot(sample_processes=False), device="x")
        region.mtu = 9000
        region.transport = "native"
        snap = region.snapshot(sample_processes=False)
        text = format_table(snap, device="fzo0")
        assert "interface: fzo0" in text
        assert "  mtu: 9000\n" in text
        assert "  per-packet path: native\n" in text
        assert "transfer: 2.00 KiB received, 0 B sent" in text
        # newest handshake first, as wg show sorts
        assert text.index(base64.b64encode(new).decode()) < text.index(
            base64.b64encode(old).decode()
        )
        assert "latest handshake: 10 minutes" in text
        assert "transfer: 1.50 KiB received, 0 B sent" in text
        data = json.loads(to_json(snap))
        assert data["totals"]["udp_rx_bytes"] == 2048
        assert data["mtu"] == 9000
        assert {p["public_key"] for p in data["peers"]} == {
            base64.b64encode(old).decode(),
            base64.b64encode(new).decode(),
        }
    finally:
        region.close()
        region.unlink()


def test_find_stats_segment_picks_the_live_gateway() -> None:
    interface = f"fzo2s{os.getpid() % 10000}"
    # A pid that no longer runs: a crashed gateway's leftover segment is skipped.
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = StatsRegion.create(stats_segment_name(interface, dead.pid), workers=1)
    live = StatsRegion.create(stats_segment_name(interface, os.getpid()), workers=1)
    try:
        assert find_stats_segment(interface) == live.name
        assert find_stats_segment(interface + "x") is None
        live.close()
        live.unlink()
        assert find_stats_segment(interface) is None
    finally:
        for region in (stale, live):
            with contextlib.suppress(OSError, ValueError):
                region.close()
            with contextlib.suppress(FileNotFoundError):
                region.unlink()
