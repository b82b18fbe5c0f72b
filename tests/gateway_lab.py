"""A running firezone-gw between wireguard-go clients and a resource, for operations tests.

    client_i (wireguard-go) ─veth─ gateway ns (firezone-gw, UDP + TUN) ─veth─ resource

Unlike bench/topology.py the test owns the config file (to rewrite it and send SIGHUP), the
environment (NOTIFY_SOCKET) and the command line. Everything is removed on close().
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from gateway.runtime_dir import runtime_dir
from gateway.show import find_stats_segment
from gateway.stats import StatsRegion
from tests.netns import WIREGUARD_RUN_DIR, Hosts, unique_name, veth, wait_for
from tests.wgpeer import WireGuardGo, wg_genkey, wg_pubkey
from tunio._netns import entered_netns

GATEWAY_TUNNEL = "10.77.0.1/24"
RESOURCE_ADDR = "10.88.0.2"
METRICS_PORT = 9586
LISTEN_PORT = 51820
MTU = 1280


def client_tunnel_addr(index: int) -> str:
    return f"10.77.0.{index + 2}"


@dataclass
class LabPeer:
    public_key: str
    allowed_ips: list[str]


def gateway_toml(
    *,
    ifname: str,
    key_file: Path,
    peers: Sequence[LabPeer],
    addresses: Sequence[str],
    listen_port: int = LISTEN_PORT,
    mtu: int = MTU,
) -> str:
    lines = [
        "[interface]",
        f'name = "{ifname}"',
        f'private_key_file = "{key_file}"',
        f"listen_port = {listen_port}",
        "addresses = [" + ", ".join(f'"{a}"' for a in addresses) + "]",
        f"mtu = {mtu}",
    ]
    for peer in peers:
        allowed = ", ".join(f'"{a}"' for a in peer.allowed_ips)
        lines += [
            "",
            "[[peers]]",
            f'public_key = "{peer.public_key}"',
            f"allowed_ips = [{allowed}]",
        ]
    lines += ["", "[metrics]", f'listen = "127.0.0.1:{METRICS_PORT}"']
    return "\n".join(lines) + "\n"


def firezone_gw() -> str:
    return str(Path(sys.executable).parent / "firezone-gw")


class Lab:
    """Namespaces and clients; `start()` runs the gateway, `close()` removes everything."""

    def __init__(self, clients: int = 1) -> None:
        self.hosts = Hosts()
        self.clients: list[WireGuardGo] = []
        self.proc: subprocess.Popen[bytes] | None = None
        self._dir = tempfile.TemporaryDirectory(prefix="fzo2-lab-")
        self.dir = Path(self._dir.name)
        self.config_path = self.dir / "gateway.toml"
        self.log_path = self.dir / "gateway.log"
        self.key_file = self.dir / "private.key"
        self.private_key = wg_genkey()
        self.public_key = wg_pubkey(self.private_key)
        self.key_file.write_text(self.private_key + "\n")
        self.key_file.chmod(0o600)
        self.ifname = unique_name("fzo2g")
        self.socket_path = WIREGUARD_RUN_DIR / f"{self.ifname}.sock"
        try:
            self.gw = self.hosts.add("fzo2gw")
            self.resource = self.hosts.add("fzo2rs")
            veth(self.gw, self.resource, "10.88.0.1/24", f"{RESOURCE_ADDR}/24")
            self.resource.ip("route", "add", "10.77.0.0/24", "via", "10.88.0.1")
            self.gw.run("sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
            for i in range(clients):
                ns = self.hosts.add(f"fzo2c{i}")
                veth(ns, self.gw, f"10.201.{i}.2/30", f"10.201.{i}.1/30")
                self.clients.append(WireGuardGo(ns, tag="fzo2c"))
        except BaseException:
            self.close()
            raise

    # ---- gateway ------------------------------------------------------------------------

    def peer(self, index: int, *extra: str) -> LabPeer:
        return LabPeer(self.clients[index].public_key, [f"{client_tunnel_addr(index)}/32", *extra])

    def write_config(
        self,
        peers: Sequence[LabPeer],
        addresses: Sequence[str] = (GATEWAY_TUNNEL,),
        *,
        listen_port: int = LISTEN_PORT,
        mtu: int = MTU,
    ) -> None:
        text = gateway_toml(
            ifname=self.ifname,
            key_file=self.key_file,
            peers=peers,
            addresses=addresses,
            listen_port=listen_port,
            mtu=mtu,
        )
        self.config_path.write_text(text)

    def command(self) -> list[str]:
        return [firezone_gw(), "--config", str(self.config_path), "--workers", "2", "run"]

    def start(self, argv: Sequence[str] | None = None, env: dict[str, str] | None = None) -> None:
        with self.log_path.open("wb") as log:
            self.proc = self.gw.popen(
                *(argv or self.command()),
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
            )
        wait_for(lambda: self.exited() or self.readyz()[0] == 200, timeout=15)
        if self.exited():
            raise RuntimeError(f"firezone-gw exited: {self.log()}")

    def exited(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-6000:]
        except OSError:
            return ""

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, sig)  # ip netns exec execs the gateway: this is the supervisor

    def stats(self) -> StatsRegion:
        segment = find_stats_segment(self.ifname)
        assert segment is not None, "no live stats segment"
        return StatsRegion.attach(segment)

    def child_pid(self, role: str) -> int:
        region = self.stats()
        try:
            return region.snapshot(sample_processes=False).process(role).pid
        finally:
            region.close()

    def wg(self, *args: str, stdin: str | None = None) -> str:
        proc = subprocess.run(
            self.gw.exec_argv("wg", *args),
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if proc.returncode:
            raise RuntimeError(f"wg {' '.join(args)}: {proc.stderr.strip()}")
        return proc.stdout

    # ---- HTTP ---------------------------------------------------------------------------

    def http_get(self, path: str) -> tuple[int, str]:
        with entered_netns(self.gw.name):
            sock = socket.create_connection(("127.0.0.1", METRICS_PORT), timeout=5)
        conn = http.client.HTTPConnection("127.0.0.1", METRICS_PORT, timeout=5)
        conn.sock = sock
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, response.read().decode()
        finally:
            conn.close()

    def readyz(self) -> tuple[int, str]:
        try:
            return self.http_get("/readyz")
        except OSError as exc:
            return 0, str(exc)

    # ---- clients ------------------------------------------------------------------------

    def connect_client(self, index: int, port: int = LISTEN_PORT) -> None:
        wg = self.clients[index]
        wg.add_peer(
            self.public_key,
            allowed_ips="10.77.0.0/24,10.88.0.0/24",
            endpoint=f"10.201.{index}.1:{port}",
        )
        wg.up(f"{client_tunnel_addr(index)}/24", mtu=MTU)
        wg.ns.ip("route", "add", "10.88.0.0/24", "dev", wg.ifname)

    def ping(
        self,
        index: int,
        *,
        count: int = 1,
        dest: str = RESOURCE_ADDR,
        source: str | None = None,
        interval: float = 0.2,
        size: int = 56,
    ) -> bool:
        argv = ["ping", "-c", str(count), "-i", str(interval), "-W", "1", "-q", "-s", str(size)]
        if source is not None:
            argv += ["-I", source]
        proc = subprocess.run(
            self.clients[index].ns.exec_argv(*argv, dest),
            capture_output=True,
            check=False,
            timeout=count * interval + 10,
        )
        return proc.returncode == 0

    def wait_ping(self, index: int, timeout: float = 10, **kwargs: object) -> None:
        wait_for(lambda: self.ping(index, **kwargs), timeout=timeout, interval=0.1)  # type: ignore[arg-type]  # kwargs are ping()'s

    # ---- teardown -----------------------------------------------------------------------

    def stop(self, timeout: float = 10) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)
        for wg in self.clients:
            wg.close()
        self.hosts.close()  # kills anything left in the namespaces
        # After a gateway that had to be killed: its socket and segments (names are ours).
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        for leftover in runtime_dir().glob(f"fzgw.{self.ifname}.*"):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
        self._dir.cleanup()
