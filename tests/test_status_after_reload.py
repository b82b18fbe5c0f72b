"""After a reload (SIGHUP, `systemctl reload`), the READY=1 that ends systemd's reload
protocol comes once the crypto process applied the new config, and its STATUS= line counts
the new peers: it said "0 peers" for up to the next status line after the crypto process's
next copy of its figures (issue 24: ~12 s seen under systemd)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from gateway.keys import encode_key, generate_private_key, public_key
from gateway.uapi.server import CONTROL_DIR_ENV
from testbed.gateways import firezone_executable
from testbed.netns import Hosts, unique_name

pytestmark = pytest.mark.netns

NEW_PEERS = 300  # enough that applying them takes the crypto process a while


def peers_toml(count: int, first: int) -> str:
    blocks = []
    for i in range(first, first + count):
        key = encode_key(public_key(generate_private_key()))
        address = f"100.64.{i // 250}.{i % 250 + 2}/32"
        blocks.append(f'[[peers]]\npublic_key = "{key}"\nallowed_ips = ["{address}"]\n')
    return "\n".join(blocks)


def next_message(sock: socket.socket, key: str) -> dict[str, str]:
    while True:
        message = dict(line.split("=", 1) for line in sock.recv(4096).decode().splitlines())
        if key in message:
            return message


def test_ready_after_reload_counts_the_new_peers(netns_hosts: Hosts, tmp_path: Path) -> None:
    host = netns_hosts.add("fzrel")
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'[interface]\nname = "{unique_name("fzrel")}"\n'
        f'private_key = "{encode_key(generate_private_key())}"\n'
        'listen_port = 51820\naddresses = ["100.64.0.1/10"]\n'
        '[metrics]\nlisten = "127.0.0.1:9586"\n' + peers_toml(1, 0)
    )
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    notify.settimeout(30)
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    env = {
        **os.environ,
        "NOTIFY_SOCKET": str(tmp_path / "notify.sock"),
        "FIREZONE_GW_RUNTIME_DIR": str(runtime),
        CONTROL_DIR_ENV: str(runtime),
    }
    log = (tmp_path / "gateway.log").open("wb")
    gateway = host.popen(
        firezone_executable(),
        "--config",
        str(config),
        "run",
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    with notify:
        ready = next_message(notify, "READY")
        assert ready["STATUS"].startswith("1 peers"), ready
        with config.open("a") as out:
            out.write("\n" + peers_toml(NEW_PEERS, 1))
        gateway.send_signal(signal.SIGHUP)  # ip netns exec passes it on (exec)
        assert "RELOADING" in next_message(notify, "RELOADING")
        reloaded = next_message(notify, "READY")
    assert reloaded["STATUS"].startswith(f"{NEW_PEERS + 1} peers"), (
        reloaded,
        (tmp_path / "gateway.log").read_text()[-2000:],
    )
