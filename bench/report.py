"""Benchmark results: medians, the markdown table with ratios, and docs/BENCHMARKS.md."""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

BENCHMARKS_DOC = Path(__file__).resolve().parent.parent / "docs" / "BENCHMARKS.md"
ERROR_CHARS = 240


def markers(wireguard_go: str) -> tuple[str, str]:
    """The comments around the network section measured against wireguard-go `wireguard_go`
    (its version): one section per version, so the Debian and the newer build's tables stay."""
    writer = "written by python -m bench.bench_network"
    return (
        f"<!-- bench:network {wireguard_go} begin ({writer}) -->",
        f"<!-- bench:network {wireguard_go} end -->",
    )


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    unit: str
    higher_is_better: bool


@dataclass
class BackendResult:
    backend: str
    error: str | None = None
    error_log: str = ""
    samples: dict[str, list[float]] = field(default_factory=dict)
    medians: dict[str, float] = field(default_factory=dict)

    def add(self, key: str, value: float) -> None:
        self.samples.setdefault(key, []).append(value)

    def finish(self) -> None:
        self.medians = {k: statistics.median(v) for k, v in self.samples.items() if v}


def _number(value: float) -> str:
    return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"


def _cell(result: BackendResult, metric: Metric, baseline: BackendResult | None) -> str:
    if result.error is not None:
        return "not run"
    value = result.medians.get(metric.key)
    if value is None:
        return "-"
    text = _number(value)
    if baseline is not None and result is not baseline:
        base = baseline.medians.get(metric.key)
        if base:
            text += f" ({value / base:.2f}x)"
    return text


def short_error(error: str) -> str:
    first = error.strip().splitlines()[0] if error.strip() else "unknown error"
    return first if len(first) <= ERROR_CHARS else first[: ERROR_CHARS - 3] + "..."


def markdown_table(
    results: Sequence[BackendResult], metrics: Sequence[Metric], baseline_name: str
) -> str:
    """Medians per backend, each with its ratio to the baseline (value / baseline)."""
    baseline = next((r for r in results if r.backend == baseline_name and not r.error), None)
    head = ["metric", *(r.backend for r in results)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in metrics:
        better = "higher" if m.higher_is_better else "lower"
        cells = [f"{m.label} ({m.unit}, {better} is better)"]
        cells += [_cell(r, m, baseline) for r in results]
        lines.append("| " + " | ".join(cells) + " |")
    notes = [f"- {r.backend}: not measured: {short_error(r.error)}" for r in results if r.error]
    return "\n".join(lines + (["", *notes] if notes else [])) + "\n"


def network_section(
    table: str, command: str, machine: Mapping[str, str], repeats: int, wireguard_go: str
) -> str:
    machine_line = "; ".join(f"{k}: {v}" for k, v in machine.items())
    begin, end = markers(wireguard_go)
    return "\n".join(
        [
            begin,
            f"### Network: gateway vs wireguard-go {wireguard_go} as the gateway (`make bench`)",
            "",
            f"Measured {time.strftime('%Y-%m-%d')} with `{command}` from the repository root,"
            " as root (`make bench` runs it with the defaults; `make bench"
            ' BENCH_ARGS="..."` passes options).',
            "",
            f"Machine: {machine_line}.",
            "",
            f"Topology: two wireguard-go {wireguard_go} clients (MTU 1280) -> gateway under"
            " test -> iperf3"
            " server, each in its own namespace, joined by veths (testbed/topology.py);"
            " single-client rows use client 0. Cells are medians of"
            f" {repeats} repetitions (ping: p50/p99 of each repetition's replies; CPU per GB:"
            " over every TCP run; idle CPU over 10 s and RSS after the runs: measured once);"
            " (x) is the ratio to wireguard-go measured in the same run. The cores are shared"
            " with other work (see the load average), so absolute figures vary from run to run;"
            " compare the ratios.",
            "",
            table.rstrip(),
            end,
        ]
    )


def replace_section(doc: str, section: str, begin: str, end: str) -> str:
    """Replace the section between `begin` and `end` in `doc`, or append it if there is none."""
    if begin in doc and end in doc:
        head, rest = doc.split(begin, 1)
        _, tail = rest.split(end, 1)
        return head + section + tail
    return doc.rstrip() + "\n\n" + section + "\n"


def update_benchmarks_doc(
    table: str,
    command: str,
    machine: Mapping[str, str],
    repeats: int,
    *,
    wireguard_go: str,
    path: Path = BENCHMARKS_DOC,
) -> None:
    """Write the section for wireguard-go version `wireguard_go`, leaving other versions' be."""
    old = path.read_text() if path.exists() else "# Benchmarks\n"
    section = network_section(table, command, machine, repeats, wireguard_go)
    path.write_text(replace_section(old, section, *markers(wireguard_go)))
