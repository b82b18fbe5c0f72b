"""What the per-call micro-benchmarks share: a timed loop and the rows they print and keep."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Mapping
from pathlib import Path


def wall_us_per_call(loop: Callable[[int], None], count: int, repeats: int) -> float:
    """Median wall-clock µs per call over `repeats` runs of `loop(count)`."""
    samples = []
    for _ in range(repeats):
        start = time.perf_counter_ns()
        loop(count)
        samples.append((time.perf_counter_ns() - start) / count / 1000)
    return statistics.median(samples)


def report(rows: Mapping[str, float], path: Path, count: int, repeats: int) -> None:
    """Print the rows and write them, with how they were measured, to `path` (JSON)."""
    width = max(map(len, rows))
    for name, value in rows.items():
        print(f"{name:{width}} {value:6.2f} us")
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps({"count": count, "repeats": repeats, "median": rows}, indent=2))
