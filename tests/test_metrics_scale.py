"""/metrics with 100,000 peers: per-peer series for `max_peer_series` peers, the rest summed."""

from __future__ import annotations

import base64
import os
import uuid
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.telemetry import stats
from gateway.telemetry.metrics import render
from gateway.telemetry.stats import StatsRegion

PEERS = 100_000
LIMIT = 1000


@pytest.fixture(scope="module")
def crowded() -> Iterator[StatsRegion]:
    """100,000 peers, each with rx bytes = its number; slots 3 and 500 freed again."""
    name = f"fzo-scale-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    region = StatsRegion.create(name, workers=1, max_peers=PEERS)
    try:
        table = region.peers
        for n in range(PEERS):
            slot = table.assign(n.to_bytes(32, "little"))
            assert slot == n
            base = table.base(slot)
            table.words[base + stats.PEER_RX_BYTES] = n
            table.words[base + stats.PEER_TX_PACKETS] = 1
            table.set_last_handshake(slot, (1_700_000_000 + n) * 10**9)
        table.release(3)
        table.release(500)
        yield region
    finally:
        region.close()
        region.unlink()


def _samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out


def test_a_scrape_at_100k_peers_lists_max_peer_series_and_sums_the_rest(
    crowded: StatsRegion,
) -> None:
    text = render(crowded.snapshot(sample_processes=False, peer_limit=LIMIT), device="fzs0")
    assert len(text.encode()) < 1 << 20  # was about 20 MB with every peer listed
    samples = _samples(text)
    listed = [labels["public_key"] for labels, _ in samples["wireguard_peer_receive_bytes_total"]]
    assert len(listed) == LIMIT
    first = [n for n in range(PEERS) if n not in (3, 500)][:LIMIT]  # the first in-use slots
    assert listed == [base64.b64encode(n.to_bytes(32, "little")).decode() for n in first]
    rest = range(first[-1] + 1, PEERS)
    assert samples["firezone_gw_peers"] == [({}, PEERS - 2)]
    assert samples["firezone_gw_peers_aggregated"] == [({}, len(rest))]
    by_direction = {
        (labels["direction"]): value
        for labels, value in samples["firezone_gw_peers_aggregated_bytes"]
    }
    assert by_direction == {"receive": sum(rest), "transmit": 0}
    packets = {
        labels["direction"]: value
        for labels, value in samples["firezone_gw_peers_aggregated_packets"]
    }
    assert packets == {"receive": 0, "transmit": len(rest)}


def test_max_peer_series_0_lists_no_peer_and_no_limit_lists_all(crowded: StatsRegion) -> None:
    none = crowded.snapshot(sample_processes=False, peer_limit=0)
    assert none.peers == ()
    assert none.aggregated.peers == PEERS - 2
    assert "wireguard_peer_receive_bytes_total{" not in render(none, device="fzs0")
    every = crowded.snapshot(sample_processes=False)  # `show`: every peer
    assert len(every.peers) == PEERS - 2
    assert every.aggregated == stats.PeerAggregate()


def test_peer_count_for_the_status_line_reads_two_columns(crowded: StatsRegion) -> None:
    assert crowded.peers.count(handshake_since=0) == (PEERS - 2, PEERS - 2)
    assert crowded.peers.count(handshake_since=1_700_000_000 + PEERS - 10) == (PEERS - 2, 10)
