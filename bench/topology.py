"""The benchmark topology: wireguard-go clients -> gateway under test -> resource (iperf3).

    client0 ─veth─┐                    ┌─veth─ resource (iperf3 -s, one server per client)
    client1 ─veth─┴─ gateway (backend) ┘

Every client is its own namespace running wireguard-go (MTU 1280), so only the gateway
changes between backends. The gateway is either wireguard-go with IP forwarding on (the
reference) or `firezone-gw --workers N`. Namespaces, veths and WireGuard peers come from
tests/netns.py and tests/wgpeer.py, so names stay unique per run and everything is removed
on close(), even after a failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import psutil

from tests.netns import Hosts, NetNS, run, unique_name, veth, wait_for
from tests.wgpeer import WireGuardGo, wg_genkey, wg_pubkey

TAG = "fzb"
TUNNEL_MTU = 1280
LISTEN_PORT = 51820
GATEWAY_TUNNEL_ADDR = "10.77.0.1"
TUNNEL_NET = "10.77.0.0/24"
RESOURCE_NET = "10.88.0.0/24"
GATEWAY_RESOURCE_ADDR = "10.88.0.1"
RESOURCE_ADDR = "10.88.0.2"
GATEWAY_TUNNEL_ADDR6 = "fd00:77::1"
TUNNEL_NET6 = "fd00:77::/64"
RESOURCE_NET6 = "fd00:88::/64"
GATEWAY_RESOURCE_ADDR6 = "fd00:88::1"
RESOURCE_ADDR6 = "fd00:88::2"
CLIENT_LISTEN_BASE = 51900
METRICS_LISTEN = "127.0.0.1:9108"
IPERF_BASE_PORT = 5201
MAX_CLIENTS = 8
FIREZONE_CMD_ENV = "FZ_BENCH_GW_CMD"
DEFAULT_FIREZONE_CMD = "{exe} --config {config} --workers {workers}"
READY_TIMEOUT = 15.0


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


@dataclass(frozen=True)
class ClientOptions:
    """How one client differs from the plain benchmark client (the defaults)."""

    mtu: int = TUNNEL_MTU
    # The gateway's config names this client's endpoint, so the gateway can initiate.
    gateway_knows_endpoint: bool = False
    # False: the gateway's config does not list this client's key at all.
    known_to_gateway: bool = True
    # Use these tunnel addresses instead of the ones the gateway allows (spoofing).
    source_addrs: tuple[str, str] | None = None
    # Wait for this client's handshake and ping before the topology is handed out.
    wait_ready: bool = True


@dataclass(frozen=True)
class ClientSpec:
    index: int
    tunnel_addr: str
    underlay_addr: str
    gateway_underlay_addr: str
    private_key: str
    public_key: str
    tunnel_addr6: str = ""
    options: ClientOptions = field(default_factory=ClientOptions)

    @property
    def iperf_port(self) -> int:
        return IPERF_BASE_PORT + self.index

    @property
    def listen_port(self) -> int:
        return CLIENT_LISTEN_BASE + self.index

    @property
    def interface_addrs(self) -> tuple[str, str]:
        """The (IPv4, IPv6) addresses the client really uses inside the tunnel."""
        return self.options.source_addrs or (self.tunnel_addr, self.tunnel_addr6)


def client_specs(count: int, options: Sequence[ClientOptions] = ()) -> list[ClientSpec]:
    """Addresses and fresh keys for `count` clients (one /30 underlay link each).

    `options[i]` applies to client i; clients without an entry get the defaults.
    """
    if not 1 <= count <= MAX_CLIENTS:
        raise ValueError(f"clients must be 1..{MAX_CLIENTS}, got {count}")
    if len(options) > count:
        raise ValueError(f"{len(options)} client options for {count} clients")
    specs = []
    for i in range(count):
        key = wg_genkey()
        specs.append(
            ClientSpec(
                index=i,
                tunnel_addr=f"10.77.0.{i + 2}",
                underlay_addr=f"10.201.{i}.2",
                gateway_underlay_addr=f"10.201.{i}.1",
                private_key=key,
                public_key=wg_pubkey(key),
                tunnel_addr6=f"fd00:77::{i + 2:x}",
                options=options[i] if i < len(options) else ClientOptions(),
            )
        )
    return specs


class GatewayBackend(Protocol):
    """A gateway under test, running in `ns` and serving `clients`."""

    name: str
    public_key: str

    def start(self, ns: NetNS, clients: Sequence[ClientSpec]) -> None: ...

    def pids(self) -> list[int]:
        """Every process of the gateway (for CPU and memory accounting)."""
        ...

    def describe_failure(self) -> str: ...

    def close(self) -> None: ...


class WireGuardGoGateway:
    """The reference: wireguard-go as the gateway, the kernel forwards between its TUN and veth."""

    def __init__(self) -> None:
        self.name = "wireguard-go"
        self.private_key = wg_genkey()
        self.public_key = wg_pubkey(self.private_key)
        self._wg: WireGuardGo | None = None

    def start(self, ns: NetNS, clients: Sequence[ClientSpec]) -> None:
        try:
            self._wg = WireGuardGo(ns, tag=f"{TAG}g", private_key=self.private_key)
        except (RuntimeError, TimeoutError) as exc:
            raise BackendUnavailable(f"wireguard-go did not start: {last_line(str(exc))}") from exc
        self._wg.listen(LISTEN_PORT)
        for client in clients:
            if not client.options.known_to_gateway:
                continue
            self._wg.add_peer(
                client.public_key,
                allowed_ips=f"{client.tunnel_addr}/32,{client.tunnel_addr6}/128",
                endpoint=_endpoint_of(client) if client.options.gateway_knows_endpoint else None,
            )
        self._wg.up(f"{GATEWAY_TUNNEL_ADDR}/24", f"{GATEWAY_TUNNEL_ADDR6}/64", mtu=TUNNEL_MTU)

    def pids(self) -> list[int]:
        return [] if self._wg is None else [self._wg.proc.pid]

    def describe_failure(self) -> str:
        return "" if self._wg is None else self._wg.log()

    def close(self) -> None:
        if self._wg is not None:
            self._wg.close()


def _toml_value(value: object) -> str:
    # JSON strings, integers and arrays of strings are valid TOML values.
    if isinstance(value, bool | int | str) or (
        isinstance(value, list) and all(isinstance(v, str) for v in value)
    ):
        return json.dumps(value)
    raise TypeError(f"no TOML encoding for {value!r}")


def _endpoint_of(client: ClientSpec) -> str:
    return f"{client.underlay_addr}:{client.listen_port}"


def gateway_toml(
    *, private_key_file: str, clients: Sequence[ClientSpec], ifname: str, metrics_listen: str
) -> str:
    """The gateway config in the schema of config/gateway.toml."""
    interface: dict[str, object] = {
        "name": ifname,
        "private_key_file": private_key_file,
        "listen_port": LISTEN_PORT,
        "addresses": [f"{GATEWAY_TUNNEL_ADDR}/24", f"{GATEWAY_TUNNEL_ADDR6}/64"],
        "mtu": TUNNEL_MTU,
    }
    lines = ["[interface]", *(f"{k} = {_toml_value(v)}" for k, v in interface.items())]
    for client in clients:
        if not client.options.known_to_gateway:
            continue
        peer: dict[str, object] = {
            "public_key": client.public_key,
            "allowed_ips": [f"{client.tunnel_addr}/32", f"{client.tunnel_addr6}/128"],
        }
        if client.options.gateway_knows_endpoint:
            peer["endpoint"] = _endpoint_of(client)
        lines += ["", "[[peers]]", *(f"{k} = {_toml_value(v)}" for k, v in peer.items())]
    lines += ["", "[metrics]", f"listen = {_toml_value(metrics_listen)}"]
    return "\n".join(lines) + "\n"


def firezone_command_template() -> str:
    """The command that starts firezone-gw; override it with $FZ_BENCH_GW_CMD."""
    return os.environ.get(FIREZONE_CMD_ENV) or DEFAULT_FIREZONE_CMD


def firezone_executable() -> str:
    """firezone-gw from this venv first (`ip netns exec` keeps PATH, but be explicit)."""
    local = Path(sys.executable).parent / "firezone-gw"
    if local.exists():
        return str(local)
    return shutil.which("firezone-gw") or "firezone-gw"


class FirezoneGateway:
    """firezone-gw in the foreground (`--config FILE --workers N`); SIGTERM stops it."""

    def __init__(
        self,
        workers: int,
        command_template: str | None = None,
        *,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.name = f"firezone-gw w{workers}"
        self.workers = workers
        self.command_template = command_template or firezone_command_template()
        self.extra_args = list(extra_args)
        self.ifname = unique_name(f"{TAG}f")
        self.metrics_listen = METRICS_LISTEN
        self.ns: NetNS | None = None
        self.private_key = wg_genkey()
        self.public_key = wg_pubkey(self.private_key)
        self._dir = tempfile.TemporaryDirectory(prefix="fzb-gw-")
        self.config_path = Path(self._dir.name) / "gateway.toml"
        self.log_path = Path(self._dir.name) / "firezone-gw.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        text = self.command_template.format(
            exe=shlex.quote(firezone_executable()),
            config=shlex.quote(str(self.config_path)),
            workers=self.workers,
        )
        return [*shlex.split(text), *self.extra_args]

    def start(self, ns: NetNS, clients: Sequence[ClientSpec]) -> None:
        key_file = Path(self._dir.name) / "private.key"
        key_file.write_text(self.private_key + "\n")
        key_file.chmod(0o600)
        self.config_path.write_text(
            gateway_toml(
                private_key_file=str(key_file),
                clients=clients,
                ifname=self.ifname,
                metrics_listen=self.metrics_listen,
            )
        )
        self.ns = ns
        argv = self.command()
        with self.log_path.open("wb") as log:
            try:
                self.proc = ns.popen(*argv, stdout=log, stderr=subprocess.STDOUT)
            except OSError as exc:
                raise BackendUnavailable(f"cannot run {shlex.join(argv)}: {exc}") from exc

    def exited(self) -> str | None:
        if self.proc is None or self.proc.poll() is None:
            return None
        shown = self.command_template.format(exe="firezone-gw", config="FILE", workers=self.workers)
        return f"`{shown}` exited with {self.proc.returncode}"

    def pids(self) -> list[int]:
        if self.proc is None or self.proc.poll() is not None:
            return []
        try:
            root = psutil.Process(self.proc.pid)
            return [root.pid, *(c.pid for c in root.children(recursive=True))]
        except psutil.NoSuchProcess:
            return []

    @property
    def metrics_url(self) -> str:
        """The metrics endpoint; reachable only inside the gateway's namespace."""
        return f"http://{self.metrics_listen}/metrics"

    def metrics_text(self) -> str:
        """GET /metrics from inside the gateway's namespace."""
        if self.ns is None:
            raise RuntimeError("the gateway was not started")
        return self.ns.run("curl", "-sf", "--max-time", "5", self.metrics_url)

    def stats_segment(self) -> str:
        """Name of the supervisor's shared-memory stats region (see gateway/stats.py)."""
        if self.proc is None:
            raise RuntimeError("the gateway was not started")
        return f"fzgw.{self.ifname}.{self.proc.pid}.stats"

    def role_pids(self) -> dict[str, int]:
        """Pid of every child by role ('worker0', 'crypto', 'udp'), from the stats region."""
        from gateway.stats import StatsRegion  # noqa: PLC0415 - only firezone-gw runs need it

        region = StatsRegion.attach(self.stats_segment())
        try:
            snap = region.snapshot(sample_processes=False)
            return {p.role: p.pid for p in snap.processes if p.role != "supervisor"}
        finally:
            region.close()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def describe_failure(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM to the supervisor; NetNS.close() kills leftovers
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)
        self._dir.cleanup()


@dataclass
class Topology:
    """Clients, gateway and resource namespaces, wired and ready to carry traffic."""

    hosts: Hosts
    gateway_ns: NetNS
    resource: NetNS
    backend: GatewayBackend
    clients: list[WireGuardGo] = field(default_factory=list)
    client_specs: list[ClientSpec] = field(default_factory=list)
    iperf_servers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def client_ns(self, index: int) -> NetNS:
        return self.clients[index].ns

    def ping(self, index: int = 0, *, count: int = 1, dest: str = RESOURCE_ADDR) -> bool:
        argv = ["ping", "-c", str(count), "-W", "1", "-q", dest]
        if count > 1:
            argv[1:1] = ["-i", "0.2"]
        out = subprocess.run(
            self.client_ns(index).exec_argv(*argv),
            capture_output=True,
            check=False,
            timeout=count + 5,
        )
        return out.returncode == 0

    def start_iperf_servers(self) -> None:
        for spec in self.client_specs:
            argv = ["iperf3", "-s", "-B", RESOURCE_ADDR, "-p", str(spec.iperf_port)]
            quiet = subprocess.DEVNULL
            self.iperf_servers.append(self.resource.popen(*argv, stdout=quiet, stderr=quiet))
        for spec in self.client_specs:
            wait_for(lambda p=spec.iperf_port: _listening(self.resource, p), timeout=10)

    def wait_iperf_idle(self, timeout: float = 10) -> None:
        """Wait until no iperf3 server holds a connection from the last test: iperf3 3.12
        refuses ("server is busy") a client that connects while it still finishes one."""
        for spec in self.client_specs:
            wait_for(lambda p=spec.iperf_port: _idle(self.resource, p), timeout=timeout)


def _idle(ns: NetNS, port: int) -> bool:
    return not ns.run("ss", "-Htn", "state", "established", f"sport = :{port}", check=False).strip()


def _listening(ns: NetNS, port: int) -> bool:
    return f":{port} " in ns.run("ss", "-Hltn", check=False)


def _enable_forwarding(ns: NetNS) -> None:
    ns.run("sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
    ns.run("sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=1")


def _wait_ready(topo: Topology, timeout: float) -> None:
    """Ready = every client completed a handshake with the gateway and pings the resource."""
    backend = topo.backend

    def ready(client: WireGuardGo) -> bool:
        if isinstance(backend, FirezoneGateway) and (why := backend.exited()):
            log = backend.describe_failure()
            raise BackendUnavailable(f"{why}: {last_line(log)}", log)
        topo.ping(topo.clients.index(client), count=1)  # the first packet starts a handshake
        peer = client.peers().get(backend.public_key)
        return peer is not None and peer.latest_handshake > 0

    for client, spec in zip(topo.clients, topo.client_specs, strict=True):
        if not (spec.options.wait_ready and spec.options.known_to_gateway):
            continue
        try:
            wait_for(lambda c=client: ready(c), timeout=timeout, interval=0.2)
        except TimeoutError as exc:
            log = backend.describe_failure()
            raise BackendUnavailable(
                f"{backend.name}: no handshake with client {client.ifname} within {timeout:.0f}s;"
                f" last gateway log line: {last_line(log)}",
                log,
            ) from exc
        if not topo.ping(topo.clients.index(client), count=3):
            raise BackendUnavailable(
                f"{backend.name}: handshake done but no ping reply from {RESOURCE_ADDR}",
                backend.describe_failure(),
            )


@contextlib.contextmanager
def topology(
    backend: GatewayBackend,
    *,
    clients: int = 1,
    ready_timeout: float = READY_TIMEOUT,
    client_options: Sequence[ClientOptions] = (),
    iperf: bool = True,
) -> Iterator[Topology]:
    """Build the topology around `backend`, wait until traffic crosses it, tear it down after.

    IPv4 and IPv6 both run inside the tunnel and between gateway and resource. Clients listen
    on fixed ports (ClientSpec.listen_port). Raises BackendUnavailable (with the gateway's log)
    if the gateway never gets ready.
    """
    specs = client_specs(clients, client_options)
    hosts = Hosts()
    topo: Topology | None = None
    try:
        gateway_ns = hosts.add(f"{TAG}gw")
        resource = hosts.add(f"{TAG}rs")
        topo = Topology(hosts, gateway_ns, resource, backend, client_specs=specs)
        gw_if, rs_if = veth(
            gateway_ns, resource, f"{GATEWAY_RESOURCE_ADDR}/24", f"{RESOURCE_ADDR}/24"
        )
        gateway_ns.ip("addr", "add", f"{GATEWAY_RESOURCE_ADDR6}/64", "dev", gw_if, "nodad")
        resource.ip("addr", "add", f"{RESOURCE_ADDR6}/64", "dev", rs_if, "nodad")
        resource.ip("route", "add", TUNNEL_NET, "via", GATEWAY_RESOURCE_ADDR)
        resource.ip("-6", "route", "add", TUNNEL_NET6, "via", GATEWAY_RESOURCE_ADDR6)
        _enable_forwarding(gateway_ns)
        client_hosts = [hosts.add(f"{TAG}c{spec.index}") for spec in specs]
        for spec, ns in zip(specs, client_hosts, strict=True):
            veth(ns, gateway_ns, f"{spec.underlay_addr}/30", f"{spec.gateway_underlay_addr}/30")
        backend.start(gateway_ns, specs)
        for spec, ns in zip(specs, client_hosts, strict=True):
            wg = WireGuardGo(ns, tag=f"{TAG}c", private_key=spec.private_key)
            topo.clients.append(wg)
            wg.listen(spec.listen_port)
            wg.add_peer(
                backend.public_key,
                allowed_ips=f"{TUNNEL_NET},{RESOURCE_NET},{TUNNEL_NET6},{RESOURCE_NET6}",
                endpoint=f"{spec.gateway_underlay_addr}:{LISTEN_PORT}",
            )
            addr4, addr6 = spec.interface_addrs
            wg.up(f"{addr4}/24", f"{addr6}/64", mtu=spec.options.mtu)
            ns.ip("route", "add", RESOURCE_NET, "dev", wg.ifname)
            ns.ip("-6", "route", "add", RESOURCE_NET6, "dev", wg.ifname)
        _wait_ready(topo, ready_timeout)
        if iperf:
            topo.start_iperf_servers()
        yield topo
    finally:
        if topo is not None:
            for wg in topo.clients:
                wg.close()
        backend.close()
        hosts.close()


def tool_version(*argv: str) -> str:
    """The version number `argv` prints (e.g. `wireguard-go --version`), for the record."""
    try:
        found = re.search(r"v?\d+(?:\.\d+)+", run(argv, check=False))
    except OSError:
        return "unknown"
    return found.group() if found else "unknown"
