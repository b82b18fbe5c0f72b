"""The benchmark's config file, table and docs section (no network needed)."""

from __future__ import annotations

import tomllib

import pytest

from bench.__main__ import discover
from bench.report import BEGIN, END, BackendResult, Metric, markdown_table, replace_section
from bench.topology import FIREZONE_CMD_ENV, FirezoneGateway, client_specs, gateway_toml

UP = Metric("up", "upload", "Gbit/s", True)


def test_gateway_toml_has_the_config_schema() -> None:
    clients = client_specs(2)
    doc = tomllib.loads(
        gateway_toml(
            private_key_file="/k", clients=clients, ifname="fzbf1", metrics_listen="127.0.0.1:9"
        )
    )
    assert doc["interface"] == {
        "name": "fzbf1",
        "private_key_file": "/k",
        "listen_port": 51820,
        "addresses": ["10.77.0.1/24", "fd00:77::1/64"],
        "mtu": 1280,
    }
    assert [p["public_key"] for p in doc["peers"]] == [c.public_key for c in clients]
    assert [p["allowed_ips"][0] for p in doc["peers"]] == ["10.77.0.2/32", "10.77.0.3/32"]
    assert doc["metrics"] == {"listen": "127.0.0.1:9"}


def test_firezone_command_fills_the_template() -> None:
    gw = FirezoneGateway(4, "{exe} run --config {config} --workers {workers}")
    argv = gw.command()
    assert argv[1:] == ["run", "--config", str(gw.config_path), "--workers", "4"]
    gw.close()


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
    doc = "# Benchmarks\n\nintro\n"
    once = replace_section(doc, f"{BEGIN}\nold\n{END}")
    twice = replace_section(once + "\n## other\n", f"{BEGIN}\nnew\n{END}")
    assert twice.count(BEGIN) == 1
    assert "old" not in twice
    assert "new" in twice
    assert twice.startswith("# Benchmarks\n\nintro\n")
    assert twice.rstrip().endswith("## other")


def test_runner_finds_every_bench_module_network_first() -> None:
    modules = discover()
    assert modules[0] == "bench_network"
    assert all(m.startswith("bench_") for m in modules)


def test_firezone_command_can_be_overridden_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(FIREZONE_CMD_ENV, "{exe} run -c {config} -w {workers}")
    gw = FirezoneGateway(2)
    assert gw.command()[1:] == ["run", "-c", str(gw.config_path), "-w", "2"]
    gw.close()
