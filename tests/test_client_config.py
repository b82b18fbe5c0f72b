"""`firezone-gw client-config`: its output brings up a real wg-quick client that reaches us."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.cli.clientconfig import render
from gateway.config import parse_config_text
from gateway.keys import encode_key, generate_private_key
from testbed.netns import Hosts, unique_name, veth, wait_for

FIREZONE_GW = [sys.executable, "-m", "gateway"]


def _cli(*args: str, config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*FIREZONE_GW, "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def _write_config(folder: Path, ifname: str) -> Path:
    key = folder / "private.key"
    key.write_text(encode_key(generate_private_key()) + "\n")
    key.chmod(0o600)
    config = folder / "gateway.toml"
    config.write_text(
        f'[interface]\nname = "{ifname}"\nprivate_key_file = "private.key"\n'
        'listen_port = 51820\naddresses = ["100.90.0.1/24"]\n'
        '\n[metrics]\nlisten = "127.0.0.1:9586"\n'
    )
    return config


def test_cli_refuses_unknown_peer_and_bad_arguments(tmp_path: Path) -> None:
    config = _write_config(tmp_path, "fzcc0")
    other = encode_key(generate_private_key())
    result = _cli("client-config", "--peer", other, "--endpoint", "192.0.2.1:51820", config=config)
    assert result.returncode == 1
    assert "no peer with public key" in result.stderr
    result = _cli("client-config", "--new", "--endpoint", "no-port", config=config)
    assert result.returncode == 2
    assert "expected HOST:PORT" in result.stderr
    result = _cli("client-config", "--endpoint", "192.0.2.1:1", config=config)
    assert result.returncode == 2
    assert "exactly one of --peer PUBKEY or --new" in result.stderr


@pytest.mark.netns
def test_new_client_config_works_with_wg_quick(netns_hosts: Hosts, tmp_path: Path) -> None:
    gateway_ns, client_ns = netns_hosts.add("fzccg"), netns_hosts.add("fzccc")
    veth(gateway_ns, client_ns, "10.203.0.1/24", "10.203.0.2/24")
    config = _write_config(tmp_path, unique_name("fzccw"))
    made = _cli("client-config", "--new", "--endpoint", "10.203.0.1:51820", config=config)
    assert made.returncode == 0, made.stderr
    peer_block = made.stderr.split("\n", 1)[1]
    assert peer_block.startswith("[[peers]]")
    assert "Address = 100.90.0.2/32" in made.stdout
    with config.open("a") as f:
        f.write("\n" + peer_block)
    log = (tmp_path / "gateway.log").open("wb")
    gateway = gateway_ns.popen(
        *FIREZONE_GW, "--config", str(config), "--workers", "1", stdout=log, stderr=log
    )
    client_if = unique_name("fzccq")
    client_conf = tmp_path / f"{client_if}.conf"
    client_conf.write_text(made.stdout)
    client_conf.chmod(0o600)
    env = dict(
        os.environ,
        WG_QUICK_USERSPACE_IMPLEMENTATION="wireguard-go",
        WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD="1",
    )
    try:
        wait_for(lambda: "UDP" in (tmp_path / "gateway.log").read_text(), timeout=15)
        up = subprocess.run(
            client_ns.exec_argv("wg-quick", "up", str(client_conf)),
            capture_output=True, text=True, env=env, timeout=30, check=False,
        )  # fmt: skip
        assert up.returncode == 0, up.stderr
        ping = client_ns.run("ping", "-c", "3", "-i", "0.3", "-W", "5", "100.90.0.1", check=False)
        assert " 0% packet loss" in ping, (tmp_path / "gateway.log").read_text()
    finally:
        subprocess.run(
            client_ns.exec_argv("wg-quick", "down", str(client_conf)),
            capture_output=True, env=env, timeout=30, check=False,
        )  # fmt: skip
        gateway.send_signal(signal.SIGTERM)
        gateway.wait(10)
        log.close()


def _rendered(tmp_path: Path, extra: str) -> str:
    key = tmp_path / "private.key"
    key.write_text(encode_key(generate_private_key()) + "\n")
    key.chmod(0o600)
    peer = encode_key(generate_private_key())
    config = parse_config_text(
        '[interface]\nname = "fzcc1"\nprivate_key_file = "private.key"\nlisten_port = 51820\n'
        'addresses = ["100.90.0.1/24", "fd00:90::1/64"]\n[metrics]\nlisten = "127.0.0.1:9586"\n'
        f'[[peers]]\npublic_key = "{peer}"\nallowed_ips = ["100.90.0.2/32"]\n' + extra,
        base_dir=tmp_path,
        source="gateway.toml",
    )
    return render(config, peer=config.peers[0], endpoint="192.0.2.1:51820", private_key=None)


def test_with_dns_resources_the_client_uses_the_gateways_dns_and_routes_the_proxy_ranges(
    tmp_path: Path,
) -> None:
    text = _rendered(
        tmp_path,
        '[dns]\nupstreams = ["192.0.2.53"]\n'
        '[[resources]]\nname = "app"\naddress = "app.corp.test"\n',
    )
    assert "DNS = 100.90.0.1, fd00:90::1\n" in text
    assert (
        "AllowedIPs = 100.90.0.0/24, fd00:90::/64, 100.96.0.0/11, fd00:2021:1111:8000::/107\n"
        in text
    )


def test_without_a_dns_server_the_client_config_has_no_dns_line_nor_proxy_ranges(
    tmp_path: Path,
) -> None:
    text = _rendered(tmp_path, "")
    assert "DNS =" not in text
    assert "AllowedIPs = 100.90.0.0/24, fd00:90::/64\n" in text
