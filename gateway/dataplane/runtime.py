"""Everything the supervisor owns and forks its children with, opened and closed as one.

The TUN device and its queues, the rings, the stats segment, the UDP socket, the control
socketpair to the crypto process, the `wg` control socket, the run-state memfds and (with a
DNS server) the mapping socketpair from the DNS process. All of it belongs to the
supervisor, so a restarted child is forked from the same objects: a TUN worker or the UDP
process can die without losing a session (the keys live in the crypto process), and the UDP
socket's kernel queue keeps datagrams while the UDP process restarts.

`Runtime.open` opens all of it or nothing (what was opened before a failure is closed);
`close` is the teardown. The TUN queues, the UDP socket and the run-state memfds may come
from a previous supervisor instead (`handover.Inherited`: systemd's fd store after a crash,
or an upgrade in place): the same device, socket and sessions; `handover_fds` names them
for the next one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from gateway import topology
from gateway.config import GatewayConfig
from gateway.dataplane.handover import UDP, Inherited, tun_queue_name
from gateway.dataplane.mappings import MappingPair
from gateway.dataplane.rings import RingTopology
from gateway.dataplane.runstate import MEMFD_NAMES, SESSIONS, SESSIONS_BYTES, RunState
from gateway.telemetry import stats as st
from gateway.telemetry.show import remove_dead_segments, stats_segment_name
from gateway.uapi import ERR_IO, DeviceState, SetRequest, UapiServer
from gateway.udp_io import UdpIo
from tunio.device_state import queue_device_name
from tunio.errors import DeviceInUseError, TunError
from tunio.linux import TunQueue, open_multiqueue
from tunio.netlink import IPInterface, TunDeviceManager

if TYPE_CHECKING:
    from tunio.linkwatch import LinkWatch

log = logging.getLogger(__name__)

# Merge TCP segments into one TUN write (tunio.offload): one forwarded packet, not dozens.
TUN_GRO = os.environ.get("FIREZONE_GW_TUN_GRO", "1") != "0"
IN_USE_WAIT = 1.0  # seconds a device still held elsewhere is tried again (_open_queues)


class SupervisorError(Exception):
    """Setup failed in a way the operator must fix (message says what)."""


class _NoBackend:
    """The supervisor never serves the control socket; the crypto process does."""

    def get_snapshot(self) -> DeviceState:
        return DeviceState()

    def apply(self, request: SetRequest) -> int:
        return ERR_IO


@dataclass
class Tun:
    """The multi-queue TUN device: one queue per worker, configured over netlink.

    A device taken back from a previous supervisor is configured already (addresses, MTU,
    up): its `configure` waits until the children forward (`configure_kept`), as does the
    link watch, so a restart forwards before it loads pyroute2 (about 1 s on a busy host).
    """

    name: str
    queues: list[TunQueue]
    manager: TunDeviceManager
    mtu: int  # the config's, not the config: workers must hold no key material
    addresses: Sequence[IPInterface]
    kept: bool  # taken back from a previous supervisor, configured by `configure_kept`
    link_watch: LinkWatch | None = field(default=None)  # MTU changes made with `ip link`

    def configure(self) -> None:
        """MTU and addresses of the config, over netlink; TunError says why not."""
        self.manager.configure(mtu=self.mtu, addresses=self.addresses)

    def configure_kept(self) -> None:
        """A kept device configured as the config says (idempotent), once the children
        forward; SupervisorError says why not."""
        if not self.kept:
            return
        self.kept = False
        try:
            self.configure()
        except TunError as exc:
            raise SupervisorError(str(exc)) from exc

    def watch_link(self) -> LinkWatch:
        """Start following the device's MTU (pyroute2: after the children are forked)."""
        if self.link_watch is None:
            from tunio.linkwatch import LinkWatch  # noqa: PLC0415 - imports pyroute2: after the fork

            self.link_watch = LinkWatch(self.queues[0].fileno())
        return self.link_watch

    def device_name(self) -> str | None:
        """The device's current name, asked through our own queue fd, so a device moved to
        another network namespace still counts; None once it was deleted."""
        try:
            return queue_device_name(self.queues[0].fileno())
        except OSError:
            return None

    def close(self) -> None:
        if self.link_watch is not None:
            self.link_watch.close()
        here = self.device_name() == self.name
        for queue in self.queues:
            queue.close()
        # A non-persistent TUN device disappears with its last queue; make sure, unless it
        # was deleted or moved away (a device of that name here now is not ours).
        if here and self.manager.exists():
            with contextlib.suppress(TunError, OSError):
                self.manager.delete()


@dataclass
class Runtime:
    """What the supervisor owns; children are forked with it."""

    tun: Tun
    rings: RingTopology
    stats: st.StatsRegion
    udp: UdpIo  # replaced when the listen port moves
    control: socket.socket  # the supervisor's end of the socketpair to the crypto process
    control_child: socket.socket  # the crypto process's end
    uapi: UapiServer  # the `wg` control socket, served by the crypto process
    runstate: RunState | None  # None in a child that must not hold key material
    mappings: MappingPair | None  # DNS process -> crypto process, only with a DNS server

    @classmethod
    def open(
        cls, config: GatewayConfig, workers: int, inherited: Inherited | None = None
    ) -> Runtime:
        """Open everything for `config` with `workers` TUN queues, taking what `inherited`
        holds; SupervisorError says what failed (everything opened before it is closed
        again)."""
        inherited = inherited or Inherited({})
        interface = config.interface
        with ExitStack() as opened:
            tun = _open_tun(interface.name, workers, config, inherited)
            opened.callback(tun.close)
            rings = RingTopology.create(workers, interface.mtu)
            opened.callback(rings.close)
            stats = _create_stats(
                interface.name, workers, len(config.peers), dns=config.dns is not None
            )
            opened.callback(_close_stats, stats)
            stats.attach_process(topology.SUPERVISOR)  # its pid, for CPU and RSS in /metrics
            stats.mtu = interface.mtu
            udp = _bind_udp(interface.listen_port, config, inherited)
            opened.callback(udp.close)
            stats.listen_port = udp.port
            control, control_child = _socketpair()
            opened.callback(control.close)
            opened.callback(control_child.close)
            runstate = RunState(_kept_memfds(inherited))
            opened.callback(runstate.close)
            uapi = _open_uapi(interface.name)
            opened.callback(uapi.close)
            mappings = None if config.dns is None else MappingPair.create()
            opened.pop_all()
        return cls(tun, rings, stats, udp, control, control_child, uapi, runstate, mappings)

    def handover_fds(self) -> dict[str, int]:
        """What the next supervisor takes back (handover.py), by name."""
        fds = {tun_queue_name(i): q.fileno() for i, q in enumerate(self.tun.queues)}
        fds[UDP] = self.udp.fileno()
        if self.runstate is not None:
            fds.update(self.runstate.named_fds())
        return fds

    def close(self) -> None:
        self.uapi.close()  # removes the socket file only if it is still ours
        self.udp.close()
        self.tun.close()
        self.rings.close()
        _close_stats(self.stats)
        self.control.close()
        self.control_child.close()
        if self.mappings is not None:
            self.mappings.close()
        if self.runstate is not None:
            self.runstate.close()


def bind_udp(port: int, config: GatewayConfig) -> UdpIo:
    """The UDP socket on `port` with the config's buffer sizes; OSError if it cannot bind."""
    return UdpIo(port, config.udp.receive_buffer, config.udp.send_buffer)


def _bind_udp(port: int, config: GatewayConfig, inherited: Inherited) -> UdpIo:
    sock = inherited.take_udp()
    if sock is not None:
        try:
            udp = UdpIo(0, config.udp.receive_buffer, config.udp.send_buffer, sock=sock)
        except OSError as exc:  # UdpIo closed it
            inherited.refuse([UDP], f"setting its options: {exc.strerror}")
        else:
            log.info("kept UDP socket on port %d", udp.port)
            return udp
    try:
        return bind_udp(port, config)
    except OSError as exc:
        raise SupervisorError(f"cannot bind UDP port {port}: {exc.strerror}") from exc


def _kept_memfds(inherited: Inherited) -> dict[str, int]:
    kept = {}
    for name, memfd_name in MEMFD_NAMES.items():
        size = SESSIONS_BYTES if name == SESSIONS else None
        fd = inherited.take_memfd(name, memfd_name, size)
        if fd is not None:
            kept[name] = fd
    if kept:
        log.info("kept run-time state: %s", ", ".join(sorted(kept)))
    return kept


def _open_tun(name: str, workers: int, config: GatewayConfig, inherited: Inherited) -> Tun:
    queues = inherited.take_tun_queues(name, workers, vnet_hdr=TUN_GRO)
    kept = queues is not None
    if queues is not None:
        log.info("kept TUN device %s with its %d queues", name, len(queues))
    else:
        queues = _open_queues(name, workers)
    interface = config.interface
    tun = Tun(name, queues, TunDeviceManager(name), interface.mtu, interface.addresses, kept)
    if kept:
        return tun  # configured by its previous supervisor: configure_kept() after the fork
    try:
        tun.configure()
    except TunError as exc:
        tun.close()
        raise SupervisorError(str(exc)) from exc
    return tun


def _open_queues(name: str, workers: int) -> list[TunQueue]:
    """A fresh device. Queues refused from systemd's fd store are still held there until it
    handled FDSTOREREMOVE (asynchronously): a device in use is tried again for a second."""
    deadline = time.monotonic() + IN_USE_WAIT
    while True:
        try:
            return open_multiqueue(name, workers, vnet_hdr=TUN_GRO)
        except DeviceInUseError as exc:
            if time.monotonic() >= deadline:
                raise SupervisorError(str(exc)) from exc
            time.sleep(0.1)
        except TunError as exc:
            raise SupervisorError(str(exc)) from exc


def _create_stats(name: str, workers: int, peers: int, *, dns: bool) -> st.StatsRegion:
    try:
        for dead in remove_dead_segments(name):
            log.info("removed %s, left by a gateway that is gone", dead)
        return st.StatsRegion.create(
            stats_segment_name(name, os.getpid()),
            workers=workers,
            max_peers=max(1024, peers),
            dns=dns,
        )
    except (OSError, ValueError) as exc:
        raise SupervisorError(f"cannot create the stats segment: {exc}") from exc


def _close_stats(stats: st.StatsRegion) -> None:
    with contextlib.suppress(OSError):
        stats.close()
        stats.unlink()


def _socketpair() -> tuple[socket.socket, socket.socket]:
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    parent.setblocking(False)
    child.setblocking(False)
    return parent, child


def _open_uapi(name: str) -> UapiServer:
    try:
        return UapiServer.for_interface(name, _NoBackend())
    except OSError as exc:
        raise SupervisorError(f"cannot create the control socket for {name}: {exc}") from exc
