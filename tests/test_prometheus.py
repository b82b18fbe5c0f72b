"""contrib/: the Prometheus alerting rules and the Grafana dashboard.

promtool (Debian's prometheus package) checks the rules and runs their unit tests
(contrib/prometheus/firezone-gw.rules.test.yml); a real Prometheus server, on loopback in a
namespace of its own, scrapes a running gateway, loads the rules, and its API must list
every series the rules and the dashboard use."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.keys import encode_key, generate_private_key, public_key
from gateway.nat.table import DEFAULT_MAX_ENTRIES
from gateway.uapi.server import CONTROL_DIR_ENV
from testbed.gateways import firezone_executable
from testbed.netns import Hosts, unique_name

CONTRIB = Path(__file__).resolve().parent.parent / "contrib"
RULES = CONTRIB / "prometheus" / "firezone-gw.rules.yml"
RULE_TESTS = CONTRIB / "prometheus" / "firezone-gw.rules.test.yml"
DASHBOARD = CONTRIB / "grafana" / "firezone-gw.json"
METRIC_NAME = re.compile(r"\b((?:firezone_gw|wireguard)_[a-z_]+)\b")
METRICS_PORT = 9586
PROMETHEUS_PORT = 9090

ASK = """
import json, sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=5) as answer:
    print(json.dumps(json.load(answer)["data"]))
"""


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["promtool", *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_the_rules_are_valid() -> None:
    proc = promtool("check", "rules", str(RULES))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS: 8 rules found" in proc.stdout


def test_the_rules_fire_on_their_unit_tests() -> None:
    proc = promtool("test", "rules", str(RULE_TESTS))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_nat_threshold_is_90_percent_of_the_table() -> None:
    (threshold,) = re.findall(r"firezone_gw_nat_entries > (\d+)", RULES.read_text())
    assert int(threshold) == int(DEFAULT_MAX_ENTRIES * 0.9)


def dashboard_expressions() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [target["expr"] for panel in panels for target in panel["targets"]]


def used_metric_names() -> set[str]:
    text = RULES.read_text() + "\n".join(dashboard_expressions())
    return set(METRIC_NAME.findall(text))


@pytest.mark.netns
def test_a_real_prometheus_scrapes_the_gateway(netns_hosts: Hosts, tmp_path: Path) -> None:
    host = netns_hosts.add("fzprom")
    peer = encode_key(public_key(generate_private_key()))
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'[interface]\nname = "{unique_name("fzprom")}"\n'
        f'private_key = "{encode_key(generate_private_key())}"\n'
        'listen_port = 51820\naddresses = ["100.64.0.1/24"]\n'
        f'[metrics]\nlisten = "127.0.0.1:{METRICS_PORT}"\n'
        '[dns]\nupstreams = ["127.0.0.1:5399"]\n'
        f'[[peers]]\npublic_key = "{peer}"\nallowed_ips = ["100.64.0.2/32"]\n'
    )
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    env = f"FIREZONE_GW_RUNTIME_DIR={runtime} {CONTROL_DIR_ENV}={runtime}".split()
    log = (tmp_path / "gateway.log").open("wb")
    host.popen(
        "env",
        *env,
        firezone_executable(),
        "--config",
        str(config),
        "run",
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    prometheus_yml = tmp_path / "prometheus.yml"
    prometheus_yml.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"rule_files:\n  - {RULES}\n"
        "scrape_configs:\n  - job_name: firezone-gw\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{METRICS_PORT}']\n"
    )
    prometheus_log = (tmp_path / "prometheus.log").open("wb")
    host.popen(
        "prometheus",
        f"--config.file={prometheus_yml}",
        f"--storage.tsdb.path={tmp_path / 'data'}",
        f"--web.listen-address=127.0.0.1:{PROMETHEUS_PORT}",
        stdout=prometheus_log,
        stderr=subprocess.STDOUT,
    )
    api = f"http://127.0.0.1:{PROMETHEUS_PORT}/api/v1"

    def ask(path: str) -> object:
        out = host.run(sys.executable, "-c", ASK, f"{api}/{path}", check=False)
        return json.loads(out) if out.strip() else None

    def ready_series() -> object:
        return ask("query?query=firezone_gw_ready%7Bjob%3D%22firezone-gw%22%7D")

    deadline = time.monotonic() + 60
    found: object = None
    while time.monotonic() < deadline:
        found = ready_series()
        if isinstance(found, dict) and found["result"]:
            break
        time.sleep(1)
    assert isinstance(found, dict) and found["result"], (
        (tmp_path / "gateway.log").read_text()[-2000:],
        (tmp_path / "prometheus.log").read_text()[-2000:],
    )
    (series,) = found["result"]
    assert series["metric"]["instance"] == f"127.0.0.1:{METRICS_PORT}"
    assert series["value"][1] == "1"  # ready: the data plane forwards
    names = ask("label/__name__/values")
    assert isinstance(names, list)
    missing = used_metric_names() - set(names)
    assert not missing, f"used by contrib/ but not scraped from the gateway: {sorted(missing)}"
    peers = ask("query?query=wireguard_peer_receive_bytes_total")
    assert isinstance(peers, dict)
    assert [s["metric"]["public_key"] for s in peers["result"]] == [peer]
    rules = ask("rules")
    assert isinstance(rules, dict)
    (group,) = rules["groups"]
    assert {r["health"] for r in group["rules"]} == {"ok"}  # every rule evaluates
    assert len(group["rules"]) == 8
