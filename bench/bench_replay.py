"""Replay-window cost per counter: in order, and reordered within the window.

python -m bench.bench_replay
"""

from __future__ import annotations

import json
import random
import statistics
import time
from pathlib import Path

from gateway.wireguard.replay import ReplayFilter

COUNT = 200_000
REPEATS = 5
RESULTS = Path(__file__).parent / "results" / "replay.json"


def ns_per_counter(counters: list[int]) -> float:
    samples = []
    for _ in range(REPEATS):
        f = ReplayFilter()
        validate = f.validate
        start = time.perf_counter_ns()
        for c in counters:
            validate(c)
        samples.append((time.perf_counter_ns() - start) / len(counters))
    return statistics.median(samples)


def main() -> None:
    in_order = list(range(COUNT))
    rng = random.Random(6)
    reordered = in_order[:]
    for i in range(0, COUNT - 64, 64):  # shuffle within blocks of 64, as a busy path might
        block = reordered[i : i + 64]
        rng.shuffle(block)
        reordered[i : i + 64] = block
    rows = {"in_order_ns": ns_per_counter(in_order), "reordered_ns": ns_per_counter(reordered)}
    print(f"in order: {rows['in_order_ns']:.0f} ns/counter, reordered: {rows['reordered_ns']:.0f}")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"repeats": REPEATS, "median": rows}, indent=2))


if __name__ == "__main__":
    main()
