"""bench_scale's own code: the idle peers it configures and its table (no network needed)."""

from __future__ import annotations

import ipaddress

from bench.bench_scale import IDLE_NET, ScaleResult, idle_peers, markdown
from gateway.keys import decode_key


def test_idle_peers_have_distinct_keys_and_addresses_in_the_idle_net() -> None:
    peers = idle_peers(500)
    assert len({p.public_key for p in peers}) == 500
    assert all(len(decode_key(p.public_key)) == 32 for p in peers)
    networks = [ipaddress.IPv4Network(ip) for p in peers for ip in p.allowed_ips]
    assert len(set(networks)) == 500
    assert all(n.prefixlen == 32 and n.subnet_of(IDLE_NET) for n in networks)


def test_table_lists_each_peer_count_and_the_throughput_ratio() -> None:
    done = ScaleResult(
        10_000,
        config_bytes=1_060_000,
        startup_seconds=4.2,
        idle_cpu_percent={"crypto": 0.1, "supervisor": 0.0},
        rss_mb={"crypto": 80.0, "supervisor": 60.0},
        pss_mb={"crypto": 50.0, "supervisor": 40.0},
        scrape_seconds=0.05,
        scrape_bytes=700_000,
    )
    failed = ScaleResult(100_000, error="not ready within 300s")
    table = markdown([done, failed], {"1 peer": [2.0, 2.2], "1 peer + 10,000 idle": [2.0, 2.0]})
    assert (
        "| 10,000 | 1.1 MB | 4.2 s | 0.00 / 0.10 | 60 / 80 | 90 | 0.050 s, 700,000 bytes |" in table
    )
    assert "| 100,000 | failed: not ready within 300s |" in table
    assert "1 peer 2.10 Gbit/s, 1 peer + 10,000 idle 2.00 Gbit/s (95%)" in table
