"""Clients, gateway and resource, each a network namespace, joined by veths.

    client0 ─veth─┐                    ┌─veth─ resource (iperf3 -s, one server per client)
    client1 ─veth─┴─ gateway (backend) ┘

Every client runs wireguard-go, so only the gateway changes between backends (addresses in
testbed/addresses.py). `Topology(backend, specs)` wires the namespaces and clients without
starting the gateway: a test then writes the config and starts it its own way and calls
`connect_client`. `topology()` does all of it and waits until traffic crosses, as the
benchmarks and most tests want. `close()` removes clients, gateway and namespaces, in that
order, even after a failure.
"""

from __future__ import annotations

import contextlib
import functools
import re
import subprocess
from collections.abc import Iterator, Sequence
from typing import Any, Generic, TypeVar

from testbed.addresses import (
    GATEWAY_RESOURCE_ADDR,
    GATEWAY_RESOURCE_ADDR6,
    LISTEN_PORT,
    RESOURCE_ADDR,
    RESOURCE_ADDR6,
    RESOURCE_NET,
    RESOURCE_NET6,
    TUNNEL_NET,
    TUNNEL_NET6,
    ClientOptions,
    ClientSpec,
    client_specs,
)
from testbed.gateway_config import GatewayPeer, peers_for
from testbed.gateways import READY_TIMEOUT, BackendUnavailable, GatewayBackend, last_line
from testbed.netns import Hosts, NetNS, run, veth, wait_for
from testbed.wgpeer import WireGuardGo

TAG = "fztb"
# Covariant: a Topology[FirezoneGateway] is a Topology[GatewayBackend] (read-only use).
Backend_co = TypeVar("Backend_co", bound=GatewayBackend, covariant=True)
BackendT = TypeVar("BackendT", bound=GatewayBackend)


class Topology(Generic[Backend_co]):
    """The namespaces, the wireguard-go clients and the gateway backend; close() removes all."""

    def __init__(
        self,
        backend: Backend_co,
        specs: Sequence[ClientSpec],
        *,
        wireguard_go: str | None = None,
    ) -> None:
        self.backend = backend
        self.client_specs = list(specs)
        self.hosts = Hosts()
        self.clients: list[WireGuardGo] = []
        self.iperf_servers: list[subprocess.Popen[bytes]] = []
        try:
            self.gateway_ns = self.hosts.add(f"{TAG}gw")
            self.resource = self.hosts.add(f"{TAG}rs")
            self._wire_resource()
            for spec in self.client_specs:
                ns = self.hosts.add(f"{TAG}c{spec.index}")
                veth(
                    ns,
                    self.gateway_ns,
                    f"{spec.underlay_addr}/30",
                    f"{spec.gateway_underlay_addr}/30",
                )
                wg = WireGuardGo(
                    ns, tag=f"{TAG}c", private_key=spec.private_key, binary=wireguard_go
                )
                self.clients.append(wg)
                wg.listen(spec.listen_port)
        except BaseException:
            self.close()
            raise

    def _wire_resource(self) -> None:
        gw, rs = self.gateway_ns, self.resource
        gw_if, rs_if = veth(gw, rs, f"{GATEWAY_RESOURCE_ADDR}/24", f"{RESOURCE_ADDR}/24")
        gw.ip("addr", "add", f"{GATEWAY_RESOURCE_ADDR6}/64", "dev", gw_if, "nodad")
        rs.ip("addr", "add", f"{RESOURCE_ADDR6}/64", "dev", rs_if, "nodad")
        rs.ip("route", "add", TUNNEL_NET, "via", GATEWAY_RESOURCE_ADDR)
        rs.ip("-6", "route", "add", TUNNEL_NET6, "via", GATEWAY_RESOURCE_ADDR6)
        gw.run("sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
        gw.run("sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=1")

    # ---- gateway's view -------------------------------------------------------------------

    def gateway_peers(self) -> list[GatewayPeer]:
        """Every client the gateway knows, as its ClientOptions say."""
        return peers_for(self.client_specs)

    def peer(self, index: int, *extra_allowed_ips: str) -> GatewayPeer:
        """Client `index` as a gateway peer, allowed its tunnel addresses plus `extra`."""
        spec = self.client_specs[index]
        return GatewayPeer(spec.public_key, [*spec.allowed_ips, *extra_allowed_ips])

    # ---- clients --------------------------------------------------------------------------

    def client_ns(self, index: int) -> NetNS:
        return self.clients[index].ns

    def connect_client(self, index: int, port: int = LISTEN_PORT) -> None:
        """Point client `index` at the gateway's UDP `port` and route the resource via it."""
        wg, spec = self.clients[index], self.client_specs[index]
        wg.add_peer(
            self.backend.public_key,
            allowed_ips=f"{TUNNEL_NET},{RESOURCE_NET},{TUNNEL_NET6},{RESOURCE_NET6}",
            endpoint=f"{spec.gateway_underlay_addr}:{port}",
        )
        addr4, addr6 = spec.interface_addrs
        wg.up(f"{addr4}/24", f"{addr6}/64", mtu=spec.options.mtu)
        wg.ns.ip("route", "add", RESOURCE_NET, "dev", wg.ifname)
        wg.ns.ip("-6", "route", "add", RESOURCE_NET6, "dev", wg.ifname)

    def ping(
        self,
        index: int = 0,
        *,
        count: int = 1,
        dest: str = RESOURCE_ADDR,
        source: str | None = None,
        interval: float = 0.2,
        size: int = 56,
    ) -> bool:
        """True if `count` pings from client `index` all got a reply."""
        argv = ["ping", "-c", str(count), "-W", "1", "-q", "-s", str(size)]
        if count > 1:
            argv += ["-i", str(interval)]
        if source is not None:
            argv += ["-I", source]
        proc = subprocess.run(
            self.client_ns(index).exec_argv(*argv, dest),
            capture_output=True,
            check=False,
            timeout=count * interval + 10,
        )
        return proc.returncode == 0

    def wait_ping(self, index: int, timeout: float = 10, **ping_args: Any) -> None:
        wait_for(lambda: self.ping(index, **ping_args), timeout=timeout, interval=0.1)

    # ---- resource -------------------------------------------------------------------------

    def start_iperf_servers(self) -> None:
        for spec in self.client_specs:
            argv = ["iperf3", "-s", "-B", RESOURCE_ADDR, "-p", str(spec.iperf_port)]
            quiet = subprocess.DEVNULL
            self.iperf_servers.append(self.resource.popen(*argv, stdout=quiet, stderr=quiet))
        for spec in self.client_specs:
            wait_for(functools.partial(_listening, self.resource, spec.iperf_port), timeout=10)

    def wait_iperf_idle(self, timeout: float = 10) -> None:
        """Wait until every iperf3 server listens and holds no connection from the last test:
        iperf3 3.12 refuses ("server is busy") a client that connects while it still finishes
        one, and between tests its listening socket may be briefly gone (connection refused)."""
        for spec in self.client_specs:
            ready = functools.partial(_ready_for_test, self.resource, spec.iperf_port)
            wait_for(ready, timeout=timeout)

    def close(self) -> None:
        for wg in self.clients:
            wg.close()
        self.backend.close()
        self.hosts.close()  # kills anything left in the namespaces (iperf3 servers too)


def _idle(ns: NetNS, port: int) -> bool:
    return not ns.run("ss", "-Htn", "state", "established", f"sport = :{port}", check=False).strip()


def _listening(ns: NetNS, port: int) -> bool:
    return f":{port} " in ns.run("ss", "-Hltn", check=False)


def _ready_for_test(ns: NetNS, port: int) -> bool:
    return _idle(ns, port) and _listening(ns, port)


def _wait_ready(topo: Topology[GatewayBackend], timeout: float) -> None:
    """Ready = every client completed a handshake with the gateway and pings the resource."""
    backend = topo.backend

    def ready(index: int) -> bool:
        if why := backend.exited():
            log = backend.describe_failure()
            raise BackendUnavailable(f"{why}: {last_line(log)}", log)
        topo.ping(index, count=1)  # the first packet starts a handshake
        peer = topo.clients[index].peers().get(backend.public_key)
        return peer is not None and peer.latest_handshake > 0

    for index, spec in enumerate(topo.client_specs):
        if not (spec.options.wait_ready and spec.options.known_to_gateway):
            continue
        try:
            wait_for(functools.partial(ready, index), timeout=timeout, interval=0.2)
        except TimeoutError as exc:
            log = backend.describe_failure()
            raise BackendUnavailable(
                f"{backend.name}: no handshake with client {topo.clients[index].ifname} within"
                f" {timeout:.0f}s; last gateway log line: {last_line(log)}",
                log,
            ) from exc
        if not topo.ping(index, count=3):
            raise BackendUnavailable(
                f"{backend.name}: handshake done but no ping reply from {RESOURCE_ADDR}",
                backend.describe_failure(),
            )


@contextlib.contextmanager
def topology(
    backend: BackendT,
    *,
    clients: int = 1,
    ready_timeout: float = READY_TIMEOUT,
    client_options: Sequence[ClientOptions] = (),
    iperf: bool = True,
    wireguard_go: str | None = None,
) -> Iterator[Topology[BackendT]]:
    """Build the topology around `backend`, wait until traffic crosses it, tear it down after.

    The clients run the wireguard-go executable `wireguard_go` (default Debian's).
    IPv4 and IPv6 both run inside the tunnel and between gateway and resource. Clients listen
    on fixed ports (ClientSpec.listen_port). Raises BackendUnavailable (with the gateway's log)
    if the gateway never gets ready; the backend is closed either way.
    """
    try:
        topo = Topology(backend, client_specs(clients, client_options), wireguard_go=wireguard_go)
    except BaseException:
        backend.close()  # a Topology that failed half-way closed it already: twice is harmless
        raise
    try:
        backend.start(topo.gateway_ns, topo.gateway_peers())
        for index in range(len(topo.clients)):
            topo.connect_client(index)
        _wait_ready(topo, ready_timeout)
        if iperf:
            topo.start_iperf_servers()
        yield topo
    finally:
        topo.close()


def tool_version(*argv: str) -> str:
    """The version number `argv` prints (e.g. `wireguard-go --version`), for the record."""
    try:
        found = re.search(r"v?\d+(?:\.\d+)+", run(argv, check=False))
    except OSError:
        return "unknown"
    return found.group() if found else "unknown"
