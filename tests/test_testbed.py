"""The test bed's config writer, gateway command and layering (no network needed)."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

from testbed.addresses import ClientOptions, client_specs
from testbed.gateway_config import GatewayPeer, gateway_toml, peers_for
from testbed.gateways import FIREZONE_CMD_ENV, FirezoneGateway

ROOT = Path(__file__).resolve().parent.parent


def test_gateway_toml_has_the_config_schema() -> None:
    clients = client_specs(2)
    text = gateway_toml(
        ifname="fzbf1",
        private_key_file="/k",
        peers=peers_for(clients),
        metrics_listen="127.0.0.1:9",
    )
    doc = tomllib.loads(text)
    assert doc["interface"] == {
        "name": "fzbf1",
        "private_key_file": "/k",
        "listen_port": 51820,
        "addresses": ["10.77.0.1/24", "fd00:77::1/64"],
        "mtu": 1280,
    }
    assert [p["public_key"] for p in doc["peers"]] == [c.public_key for c in clients]
    assert [p["allowed_ips"] for p in doc["peers"]] == [
        ["10.77.0.2/32", "fd00:77::2/128"],
        ["10.77.0.3/32", "fd00:77::3/128"],
    ]
    assert doc["metrics"] == {"listen": "127.0.0.1:9"}


def test_peers_follow_the_client_options() -> None:
    options = [ClientOptions(gateway_knows_endpoint=True), ClientOptions(known_to_gateway=False)]
    clients = client_specs(3, options)
    peers = peers_for(clients)
    assert [p.public_key for p in peers] == [clients[0].public_key, clients[2].public_key]
    assert peers[0].endpoint == "10.201.0.2:51900"
    assert peers[1].endpoint is None


def test_rewritten_config_replaces_the_old_one(tmp_path: Path) -> None:
    gw = FirezoneGateway(2)
    try:
        gw.write_config([GatewayPeer("a" * 43 + "=", ["10.77.0.2/32"])])
        gw.write_config([], addresses=("10.77.0.1/24",), listen_port=51821, mtu=1400)
        doc = tomllib.loads(gw.config_path.read_text())
        assert "peers" not in doc
        assert doc["interface"]["listen_port"] == 51821
        assert doc["interface"]["addresses"] == ["10.77.0.1/24"]
        assert doc["interface"]["mtu"] == 1400
        assert doc["interface"]["name"] == gw.ifname
        assert gw.key_file.read_text().strip() == gw.private_key
        assert gw.key_file.stat().st_mode & 0o777 == 0o600
    finally:
        gw.close()
    assert not gw.config_path.exists()


def test_firezone_command_fills_the_template() -> None:
    gw = FirezoneGateway(4, "{exe} run --config {config} --workers {workers}")
    argv = gw.command()
    assert argv[1:] == ["run", "--config", str(gw.config_path), "--workers", "4"]
    gw.close()


def test_firezone_command_can_be_overridden_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(FIREZONE_CMD_ENV, "{exe} run -c {config} -w {workers}")
    gw = FirezoneGateway(2)
    assert gw.command()[1:] == ["run", "-c", str(gw.config_path), "-w", "2"]
    gw.close()


def _imported_packages(package: str) -> dict[str, set[str]]:
    """Top-level packages each module under `package` imports, by file."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(ROOT))] = names
    return found


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [("testbed", {"tests", "bench"}), ("bench", {"tests"}), ("tests", {"bench"})],
)
def test_no_import_cycle_between_testbed_tests_and_bench(package: str, forbidden: set[str]) -> None:
    offenders = {
        path: sorted(names & forbidden)
        for path, names in _imported_packages(package).items()
        if names & forbidden
    }
    assert not offenders, f"{package}/ must not import {sorted(forbidden)}: {offenders}"
