"""The gateway under test: firezone-gw, or wireguard-go as the reference, in a namespace.

Both are configured from the same GatewayPeer list. FirezoneGateway owns its directory
(config, private key, log), so a test can rewrite the config and send SIGHUP, start it with
its own command line and environment, and read its metrics, stats region and `wg` view.
`close()` stops the process (SIGTERM, then SIGKILL to its process group) and removes its
control socket and shared-memory segments if a killed gateway left them behind.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

import psutil

from gateway.telemetry.runtime_dir import runtime_dir
from gateway.telemetry.show import find_stats_segment
from gateway.telemetry.stats import StatsRegion
from testbed.addresses import GATEWAY_ADDRESSES, LISTEN_PORT, TUNNEL_MTU
from testbed.gateway_config import METRICS_LISTEN, GatewayPeer, gateway_toml
from testbed.netns import WIREGUARD_RUN_DIR, NetNS, unique_name, wait_for
from testbed.wgpeer import WireGuardGo, wg_genkey, wg_pubkey, wireguard_go_binary
from tunio._netns import entered_netns

FIREZONE_CMD_ENV = "FZ_BENCH_GW_CMD"
DEFAULT_FIREZONE_CMD = "{exe} --config {config} --workers {workers}"
READY_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0


class BackendUnavailable(RuntimeError):
    """The gateway under test could not be started or never became ready.

    str() is one line saying why; `log` holds the tail of the gateway's own output.
    """

    def __init__(self, message: str, log: str = "") -> None:
        super().__init__(message)
        self.log = log


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


class GatewayBackend(Protocol):
    """A gateway under test, running in `ns` and serving `peers`."""

    name: str
    public_key: str

    def start(self, ns: NetNS, peers: Sequence[GatewayPeer]) -> None: ...

    def exited(self) -> str | None:
        """Why the gateway is no longer running, or None while it runs."""
        ...

    def pids(self) -> list[int]:
        """Every process of the gateway (for CPU and memory accounting)."""
        ...

    def describe_failure(self) -> str: ...

    def close(self) -> None: ...


def firezone_executable() -> str:
    """firezone-gw from this venv first (`ip netns exec` keeps PATH, but be explicit)."""
    local = Path(sys.executable).parent / "firezone-gw"
    if local.exists():
        return str(local)
    return shutil.which("firezone-gw") or "firezone-gw"


def firezone_command_template() -> str:
    """The command that starts firezone-gw; override it with $FZ_BENCH_GW_CMD."""
    return os.environ.get(FIREZONE_CMD_ENV) or DEFAULT_FIREZONE_CMD


class WireGuardGoGateway:
    """The reference: wireguard-go as the gateway, the kernel forwards between its TUN and veth.

    `binary`: the wireguard-go executable (default Debian's; ValueError if it cannot run).
    """

    def __init__(self, binary: str | None = None) -> None:
        self.name = "wireguard-go"
        self.binary = wireguard_go_binary(binary)
        self.private_key = wg_genkey()
        self.public_key = wg_pubkey(self.private_key)
        self._wg: WireGuardGo | None = None

    def start(self, ns: NetNS, peers: Sequence[GatewayPeer]) -> None:
        try:
            self._wg = WireGuardGo(
                ns, tag="fztbg", private_key=self.private_key, binary=self.binary
            )
        except (RuntimeError, TimeoutError) as exc:
            raise BackendUnavailable(f"wireguard-go did not start: {last_line(str(exc))}") from exc
        self._wg.listen(LISTEN_PORT)
        for peer in peers:
            self._wg.add_peer(
                peer.public_key, allowed_ips=",".join(peer.allowed_ips), endpoint=peer.endpoint
            )
        self._wg.up(*GATEWAY_ADDRESSES, mtu=TUNNEL_MTU)

    def exited(self) -> str | None:
        if self._wg is None or self._wg.proc.poll() is None:
            return None
        return f"wireguard-go exited with {self._wg.proc.returncode}"

    def pids(self) -> list[int]:
        return [] if self._wg is None else [self._wg.proc.pid]

    def describe_failure(self) -> str:
        return "" if self._wg is None else self._wg.log()

    def close(self) -> None:
        if self._wg is not None:
            self._wg.close()


class FirezoneGateway:
    """firezone-gw in the foreground (`--config FILE --workers N`); SIGTERM stops it."""

    def __init__(
        self,
        workers: int = 2,
        command_template: str | None = None,
        *,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.name = f"firezone-gw w{workers}"
        self.workers = workers
        self.command_template = command_template or firezone_command_template()
        self.extra_args = list(extra_args)
        self.ifname = unique_name("fztbf")
        self.socket_path = WIREGUARD_RUN_DIR / f"{self.ifname}.sock"
        self.metrics_listen = METRICS_LISTEN
        self.ns: NetNS | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.private_key = wg_genkey()
        self.public_key = wg_pubkey(self.private_key)
        self._dir = tempfile.TemporaryDirectory(prefix="fztb-gw-")
        self.dir = Path(self._dir.name)
        self.config_path = self.dir / "gateway.toml"
        self.log_path = self.dir / "firezone-gw.log"
        self.key_file = self.dir / "private.key"
        self.key_file.write_text(self.private_key + "\n")
        self.key_file.chmod(0o600)

    # ---- config and process ---------------------------------------------------------------

    def write_config(
        self,
        peers: Sequence[GatewayPeer],
        addresses: Sequence[str] = GATEWAY_ADDRESSES,
        *,
        listen_port: int = LISTEN_PORT,
        mtu: int = TUNNEL_MTU,
        extra_toml: str = "",
    ) -> None:
        """(Re)write the config file (`extra`: more TOML, e.g. [dns]); a running gateway
        reads it on SIGHUP."""
        text = gateway_toml(
            ifname=self.ifname,
            private_key_file=str(self.key_file),
            peers=peers,
            addresses=addresses,
            listen_port=listen_port,
            mtu=mtu,
            metrics_listen=self.metrics_listen,
            extra_toml=extra_toml,
        )
        self.config_path.write_text(text)

    def command(self) -> list[str]:
        text = self.command_template.format(
            exe=shlex.quote(firezone_executable()),
            config=shlex.quote(str(self.config_path)),
            workers=self.workers,
        )
        return [*shlex.split(text), *self.extra_args]

    def start(self, ns: NetNS, peers: Sequence[GatewayPeer]) -> None:
        """Write the config for `peers` and start the gateway (GatewayBackend)."""
        self.write_config(peers)
        self.launch(ns)

    def launch(
        self, ns: NetNS, argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None
    ) -> None:
        """Start the gateway with the config as written, `argv` instead of command()."""
        self.ns = ns
        argv = list(argv or self.command())
        with self.log_path.open("wb") as log:
            try:
                self.proc = ns.popen(
                    *argv, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
                )
            except OSError as exc:
                raise BackendUnavailable(f"cannot run {shlex.join(argv)}: {exc}") from exc

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Until /readyz answers 200; BackendUnavailable if the gateway exits or never does."""
        try:
            wait_for(lambda: self.exited() or self.readyz()[0] == 200, timeout=timeout)
        except TimeoutError as exc:
            log = self.describe_failure()
            raise BackendUnavailable(f"{self.name}: not ready within {timeout:.0f}s", log) from exc
        if why := self.exited():
            log = self.describe_failure()
            raise BackendUnavailable(f"{why}: {last_line(log)}", log)

    def exited(self) -> str | None:
        if self.proc is None or self.proc.poll() is None:
            return None
        shown = self.command_template.format(exe="firezone-gw", config="FILE", workers=self.workers)
        return f"`{shown}` exited with {self.proc.returncode}"

    def _running(self) -> subprocess.Popen[bytes]:
        if self.proc is None:
            raise RuntimeError(f"{self.name} was not started")
        return self.proc

    def signal(self, sig: int) -> None:
        # `ip netns exec` execs the gateway, so this pid is the supervisor's.
        os.kill(self._running().pid, sig)

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM and the exit code."""
        proc = self._running()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        return proc.wait(timeout)

    def pids(self) -> list[int]:
        if self.proc is None or self.proc.poll() is not None:
            return []
        try:
            root = psutil.Process(self.proc.pid)
            return [root.pid, *(c.pid for c in root.children(recursive=True))]
        except psutil.NoSuchProcess:
            return []

    # ---- what it shows --------------------------------------------------------------------

    def http_get(self, path: str) -> tuple[int, str]:
        """GET from the metrics server, which listens inside the gateway's namespace."""
        if self.ns is None:
            raise RuntimeError(f"{self.name} was not started")
        host, _, port = self.metrics_listen.rpartition(":")
        with entered_netns(self.ns.name):
            sock = socket.create_connection((host, int(port)), timeout=5)
        conn = http.client.HTTPConnection(host, int(port), timeout=5)
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

    def metrics_text(self) -> str:
        status, text = self.http_get("/metrics")
        if status != 200:
            raise RuntimeError(f"GET /metrics: HTTP {status}: {text[:200]}")
        return text

    def stats(self) -> StatsRegion:
        """The supervisor's live stats region (gateway/telemetry/stats/); the caller closes it."""
        segment = find_stats_segment(self.ifname)
        if segment is None:
            raise FileNotFoundError(f"no live stats segment for {self.ifname}")
        return StatsRegion.attach(segment)

    def role_pids(self) -> dict[str, int]:
        """Pid of every child by role ('worker0', 'crypto', 'udp', 'dns' when it runs), from
        the stats region; a role no process ever took (no DNS server) is left out."""
        region = self.stats()
        try:
            snap = region.snapshot(sample_processes=False)
            return {p.role: p.pid for p in snap.processes if p.role != "supervisor" and p.pid}
        finally:
            region.close()

    def child_pid(self, role: str) -> int:
        return self.role_pids().get(role, 0)

    def wg(self, *args: str, stdin: str | None = None) -> str:
        """The stock `wg` tool inside the gateway's namespace."""
        if self.ns is None:
            raise RuntimeError(f"{self.name} was not started")
        proc = subprocess.run(
            self.ns.exec_argv("wg", *args),
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if proc.returncode:
            raise RuntimeError(f"wg {' '.join(args)}: {proc.stderr.strip()}")
        return proc.stdout

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def describe_failure(self) -> str:
        return self.log_text()[-6000:]

    # ---- teardown -------------------------------------------------------------------------

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(STOP_TIMEOUT)
        # A gateway that had to be killed leaves its socket and segments (the names are ours).
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        for leftover in runtime_dir().glob(f"fzgw.{self.ifname}.*"):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
        self._dir.cleanup()
