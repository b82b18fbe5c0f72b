"""Operations benchmarks: shared-memory counter cost in the hot loop, scrape cost, UAPI codec.

Run: .venv/bin/python -m bench.bench_ops   (prints a table, writes bench/results/bench_ops.json)
"""

from __future__ import annotations

import ipaddress
import json
import os
import statistics
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from gateway.telemetry import stats
from gateway.telemetry.metrics import render
from gateway.telemetry.stats import StatsRegion
from gateway.uapi import SetRequest, UapiConnection, format_get
from testbed.uapi_model import UapiModel

RUNS = 7
COUNTER_OPS = 1_000_000
ALLOWED_IPS = 20_000
PEERS = 1024


def median_seconds(fn: Callable[[], object], runs: int = RUNS) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_counters(region: StatsRegion) -> dict[str, float]:
    block = region.process_block("crypto")
    plain = [0] * 64
    idx = stats.UDP_RX_PACKETS

    def shm_loop() -> None:
        c = block
        for _ in range(COUNTER_OPS):
            c[idx] += 1

    def list_loop() -> None:
        c = plain
        for _ in range(COUNTER_OPS):
            c[idx] += 1

    shm = median_seconds(shm_loop) / COUNTER_OPS * 1e9
    plain_ns = median_seconds(list_loop) / COUNTER_OPS * 1e9
    return {"shm_counter_add_ns": shm, "list_counter_add_ns": plain_ns, "ratio": shm / plain_ns}


def bench_scrape(region: StatsRegion) -> dict[str, float]:
    for i in range(PEERS):
        slot = region.peers.assign(i.to_bytes(32, "little"))
        assert slot is not None
        region.peers.set_endpoint(slot, f"192.0.2.{i % 250}:51820")
    snapshot_ms = median_seconds(region.snapshot) * 1e3
    snap = region.snapshot()
    render_ms = median_seconds(lambda: render(snap, device="fz0")) * 1e3
    return {"snapshot_1024_peers_ms": snapshot_ms, "render_1024_peers_ms": render_ms}


def bench_uapi() -> dict[str, float]:
    first = int(ipaddress.ip_address("10.0.0.0"))
    lines = ["set=1", "replace_peers=true"]
    for peer in range(4):
        lines.append(f"public_key={bytes([peer + 1]).hex() * 32}")
        lines += [
            f"allowed_ip={ipaddress.ip_address(first + i)}/32" for i in range(peer, ALLOWED_IPS, 4)
        ]
    request = ("\n".join(lines) + "\n\n").encode()

    def parse() -> SetRequest:
        conn = UapiConnection()
        for start in range(0, len(request), 65536):
            conn.feed(request[start : start + 65536])
        event = conn.next_event()
        assert isinstance(event, SetRequest)
        return event

    parsed = parse()
    model = UapiModel()
    model.apply(parsed)
    return {
        "parse_set_20k_ms": median_seconds(parse) * 1e3,
        "apply_20k_ms": median_seconds(lambda: UapiModel().apply(parsed)) * 1e3,
        "format_get_20k_ms": median_seconds(lambda: format_get(model.get_snapshot())) * 1e3,
        "request_bytes": float(len(request)),
    }


def main() -> None:
    region = StatsRegion.create(
        f"fzo-bench-{os.getpid()}-{uuid.uuid4().hex[:8]}", workers=4, max_peers=PEERS
    )
    try:
        results = {**bench_counters(region), **bench_scrape(region), **bench_uapi()}
    finally:
        region.close()
        region.unlink()
    width = max(len(k) for k in results)
    print(f"{'metric':<{width}}  median")
    for key, value in results.items():
        print(f"{key:<{width}}  {value:.2f}")
    out = Path(__file__).parent / "results" / "bench_ops.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"runs": RUNS, "results": results}, indent=2))


if __name__ == "__main__":
    main()
