#!/usr/bin/env python3
"""`netns_launcher.py IFNAME`: firezone-gw standing in for `wireguard-go IFNAME`.

wireguard-go's own test suite (tests/netns.sh of its source tree) takes the program under
test as its argument and calls it as `PROGRAM IFNAME` inside a network namespace, expecting
what `wireguard-go IFNAME` does: create the device and its control socket
/var/run/wireguard/IFNAME.sock, go to the background and return. Keys, peers, addresses,
ports and the MTU are then set with `wg` and `ip`, and deleting the device ends the daemon.

This script does that for firezone-gw: a fresh private key, a generated config with no peers
and no addresses (the UDP and metrics ports are free ones of this namespace, so several
gateways can share it, as wg1 and wg2 do in netns.sh), the gateway started in its own
session, and a return once its control socket answers a `get` (as `wg show` asks). The config, key
and log stay in $FIREZONE_GW_SUITE_DIR/IFNAME.PID (default /tmp/firezone-gw-suite) for a
post-mortem; `make netns-suite` removes them. Needs only the standard library (run it with
any Python 3.11); the gateway is $FIREZONE_GW, else the repository's .venv/bin/firezone-gw.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

SOCKET_DIR = Path("/var/run/wireguard")
STARTUP_SECONDS = 30.0  # generous: the suite runs on shared, busy machines
MTU = 1420  # wireguard-go's default
METRICS_FALLBACK_PORT = 9586  # when loopback is down here: the gateway logs it and runs on
REPO = Path(__file__).resolve().parent.parent


def free_port(kind: socket.SocketKind, host: str) -> int:
    """A port nothing in this namespace uses now (the kernel picks it); OSError if `host`
    is not an address here (netns.sh leaves loopback down in some namespaces)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, kind) as sock:
        if family == socket.AF_INET6:  # the gateway's UDP socket is dual-stack
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def gateway_binary() -> str:
    return os.environ.get("FIREZONE_GW") or str(REPO / ".venv" / "bin" / "firezone-gw")


def write_config(folder: Path, ifname: str, metrics_port: int) -> Path:
    key = subprocess.run(
        [gateway_binary(), "genkey"], capture_output=True, text=True, check=True
    ).stdout.strip()
    key_file = folder / "private.key"
    key_file.touch(mode=0o600)
    key_file.write_text(key + "\n")
    config = folder / "gateway.toml"
    config.write_text(
        "[interface]\n"
        f'name = "{ifname}"\n'
        f'private_key_file = "{key_file}"\n'
        f"listen_port = {free_port(socket.SOCK_DGRAM, '::')}\n"
        f"mtu = {MTU}\n"
        "\n[metrics]\n"
        f'listen = "127.0.0.1:{metrics_port}"\n'
    )
    return config


def serves_wg(control: Path) -> bool:
    """Whether the control socket answers a `get` as `wg show` would ask it (errno=0)."""
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(2)
        sock.connect(str(control))
        sock.sendall(b"get=1\n\n")
        reply = b""
        while not reply.endswith(b"\n\n") and (chunk := sock.recv(65536)):
            reply += chunk
        return b"errno=0\n" in reply
    return False


def launch(ifname: str) -> int:
    control = SOCKET_DIR / f"{ifname}.sock"
    base = Path(os.environ.get("FIREZONE_GW_SUITE_DIR", "/tmp/firezone-gw-suite"))
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    folder = base / f"{ifname}.{os.getpid()}"
    folder.mkdir(mode=0o700)
    try:
        metrics_port = free_port(socket.SOCK_STREAM, "127.0.0.1")
    except OSError:
        metrics_port = METRICS_FALLBACK_PORT
    config = write_config(folder, ifname, metrics_port)
    log_path = folder / "gateway.log"
    with log_path.open("wb") as log:
        gateway = subprocess.Popen(
            [gateway_binary(), "--config", str(config), "run"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # the daemon outlives us, as wireguard-go's does
        )
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if gateway.poll() is not None:
            break
        if control.is_socket() and serves_wg(control):
            print(f"firezone-gw {ifname}: pid {gateway.pid}, log {log_path}")
            return 0
        time.sleep(0.05)
    if gateway.poll() is None:
        gateway.terminate()
    tail = log_path.read_text(errors="replace")[-3000:]
    print(f"firezone-gw {ifname} did not start:\n{tail}", file=sys.stderr)
    return 1


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0].startswith("-"):
        print("usage: netns_launcher.py IFNAME", file=sys.stderr)
        return 2
    return launch(argv[0])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
