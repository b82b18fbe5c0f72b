"""The benchmark's table, docs section and runner (no network needed)."""

from __future__ import annotations

from bench.__main__ import discover, module_args
from bench.report import BackendResult, Metric, markdown_table, markers, replace_section

UP = Metric("up", "upload", "Gbit/s", True)


def test_table_gives_ratios_to_the_baseline_and_names_backends_not_run() -> None:
    base = BackendResult("wireguard-go", samples={"up": [1.0, 3.0, 2.0]})
    fast = BackendResult("firezone-gw w2", samples={"up": [3.0, 4.0, 5.0]})
    broken = BackendResult("firezone-gw w1", error="exited with 1: ImportError\nTraceback")
    for r in (base, fast, broken):
        r.finish()
    table = markdown_table([base, fast, broken], [UP], "wireguard-go")
    assert "| upload (Gbit/s, higher is better) | 2 | 4 (2.00x) | not run |" in table
    assert "- firezone-gw w1: not measured: exited with 1: ImportError" in table
    assert "Traceback" not in table


def test_docs_section_is_replaced_not_piled_up() -> None:
    BEGIN, END = markers("v0.0.20220316")
    doc = "# Benchmarks\n\nintro\n"
    once = replace_section(doc, f"{BEGIN}\nold\n{END}", BEGIN, END)
    twice = replace_section(once + "\n## other\n", f"{BEGIN}\nnew\n{END}", BEGIN, END)
    assert twice.count(BEGIN) == 1
    assert "old" not in twice
    assert "new" in twice
    assert twice.startswith("# Benchmarks\n\nintro\n")
    assert twice.rstrip().endswith("## other")


def test_each_wireguard_go_version_keeps_its_own_section() -> None:
    old_begin, old_end = markers("v0.0.20220316")
    new_begin, new_end = markers("v0.0.20250522")
    doc = replace_section("# Benchmarks\n", f"{old_begin}\ndebian\n{old_end}", old_begin, old_end)
    doc = replace_section(doc, f"{new_begin}\nnewer\n{new_end}", new_begin, new_end)
    doc = replace_section(doc, f"{new_begin}\nnewest\n{new_end}", new_begin, new_end)
    assert "debian" in doc
    assert "newest" in doc
    assert "newer\n" not in doc
    assert doc.index("debian") < doc.index("newest")


def test_runner_finds_every_bench_module_network_first() -> None:
    modules = discover()
    assert modules[0] == "bench_network"
    assert all(m.startswith("bench_") for m in modules)


def test_runner_gives_wireguard_go_to_the_benchmarks_that_run_it() -> None:
    wg = "/opt/wg/wireguard-go"
    assert module_args("bench_network", ["--duration", "5"], wg) == [
        "--duration",
        "5",
        "--wireguard-go",
        wg,
    ]
    assert module_args("bench_profile", ["--duration", "5"], wg) == ["--wireguard-go", wg]
    assert module_args("bench_ring", ["--duration", "5"], wg) == []
    assert module_args("bench_network", [], None) == []
