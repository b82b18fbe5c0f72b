"""The supervisor: builds the device, rings and counters, then starts and watches children.

Everything a child needs survives the child: TUN queue fds, the UDP socket, the rings (with
their eventfds) and the counters all belong to the supervisor, and a restarted child is forked
from them again. So a TUN worker or the UDP process can die without losing a session (the
keys live in the crypto process); after a crypto-process restart clients re-handshake.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from gateway.config import ConfigError, GatewayConfig, InterfaceConfig, load_config
from gateway.dataplane.children import (
    EXIT_DEVICE_GONE,
    Child,
    ChildFds,
    ProcessStates,
    report_ready,
    stop_all,
)
from gateway.dataplane.control import (
    ListenPortChanged,
    MtuChanged,
    Reload,
    decode_to_supervisor,
    receive_messages,
    send_message,
)
from gateway.dataplane.cryptomain import CryptoInputs, crypto_main
from gateway.dataplane.cryptoproc import CryptoRings
from gateway.dataplane.framing import HEADER_SIZE
from gateway.dataplane.heartbeat import Heartbeats, Stall, ready_fds
from gateway.dataplane.mappings import MappingPair
from gateway.dataplane.runstate import RunState
from gateway.dataplane.udpproc import run_udp
from gateway.dataplane.worker import run_worker
from gateway.dns.process import run_dns
from gateway.keys import encode_key
from gateway.telemetry import stats as st
from gateway.telemetry.logsetup import setup_logging
from gateway.telemetry.metrics import MetricsServer
from gateway.telemetry.sdnotify import Notifier, watchdog_interval
from gateway.telemetry.show import remove_dead_segments, stats_segment_name
from gateway.uapi import ERR_IO, DeviceState, SetRequest, UapiServer
from gateway.udp_io import UdpIo
from gateway.wireguard.constants import TRANSPORT_OVERHEAD
from shm_ring.ring import Ring
from tunio.device_state import DeviceGone, device_gone_error, interface_up, queue_device_name
from tunio.errors import TunError
from tunio.linkwatch import LinkWatch
from tunio.linux import TunQueue, open_multiqueue
from tunio.netlink import TunDeviceManager

log = logging.getLogger(__name__)

RING_SLOTS = 1000
# Merge TCP segments into one TUN write (tunio.offload): one forwarded packet, not dozens.
TUN_GRO = os.environ.get("FIREZONE_GW_TUN_GRO", "1") != "0"
# Clients commonly run wg-quick's MTU 1420 (or 1500 on some links) while the gateway's TUN
# uses 1280: slots hold at least this much so their packets still take one slot each.
MIN_INNER_PACKET = 1500
# A child with work waiting that makes no progress for this long is hung: it is restarted.
HANG_TIMEOUT = 3.0
TICK = 1.0
# While children carry traffic their heartbeats are read this often, so a hang is seen
# sooner; otherwise with the tick only. Timers alone turn a loop a few times per second: more
# turns than BUSY_TURNS between two looks is traffic.
BUSY_LOOK_INTERVAL = 0.5
BUSY_TURNS = 10
STATUS_INTERVAL = 2.0  # seconds between STATUS= lines to systemd
ACTIVE_PEER_SECONDS = 180.0  # handshake this recent: an active peer (REJECT_AFTER_TIME)


class SupervisorError(Exception):
    """Setup failed in a way the operator must fix (message says what)."""


@dataclass
class Options:
    config_path: Path
    workers: int
    log_filter: str = "info"
    log_format: str | None = None
    metrics_listen: tuple[str, int] | None = None


@dataclass
class Runtime:
    """Resources owned by the supervisor; children are forked with them."""

    queues: list[TunQueue] = field(default_factory=list)
    rings: dict[str, Ring] = field(default_factory=dict)
    udp: UdpIo | None = None
    stats: st.StatsRegion | None = None
    manager: TunDeviceManager | None = None
    link_watch: LinkWatch | None = None  # MTU changes made with `ip link`


class _NoBackend:
    """The supervisor never serves the control socket; the crypto process does."""

    def get_snapshot(self) -> DeviceState:
        return DeviceState()

    def apply(self, request: SetRequest) -> int:
        return ERR_IO


class Supervisor:
    def __init__(self, options: Options, config: GatewayConfig) -> None:
        self.options = options
        self.config = config
        self.name = config.interface.name
        self.rt = Runtime()
        self.children: dict[str, Child] = {}
        self._heartbeats: Heartbeats | None = None
        self._stalls: dict[str, Stall] = {}
        self.stopping = False
        self.exit_code = 0
        self.notifier = Notifier()
        self.metrics: MetricsServer | None = None
        self._control_parent: socket.socket | None = None
        self._control_child: socket.socket | None = None
        self._mappings: MappingPair | None = None  # DNS process -> crypto process
        self.uapi: UapiServer | None = None
        self._runstate: RunState | None = None
        self._epoll: select.epoll | None = None
        self._mtu = config.interface.mtu  # the TUN device's, as last seen (ip link may change it)
        self._announced = False  # READY=1 sent
        self._next_status = 0.0
        self._last_status: tuple[float, int, int] | None = None  # (time, rx bytes, tx bytes)
        self._states = ProcessStates()

    # ---- setup --------------------------------------------------------------------------

    def setup(self) -> None:
        cfg = self.config
        workers = self.options.workers
        try:
            self.rt.queues = open_multiqueue(self.name, workers, vnet_hdr=TUN_GRO)
            self.rt.manager = TunDeviceManager(self.name)
            self.rt.manager.configure(mtu=cfg.interface.mtu, addresses=cfg.interface.addresses)
        except TunError as exc:
            raise SupervisorError(str(exc)) from exc
        # Slots are sized for the configured MTU; a larger packet (the MTU raised at run time,
        # up to 65535) spans several slots, so the rings never limit the MTU.
        inner = max(cfg.interface.mtu, MIN_INNER_PACKET)
        datagram_slot = HEADER_SIZE + TRANSPORT_OVERHEAD + inner + 16  # + padding to 16
        ring_specs = {}
        for i in range(workers):
            ring_specs[f"worker{i}_to_crypto"] = inner
            ring_specs[f"crypto_to_worker{i}"] = inner
        ring_specs["crypto_to_udp"] = datagram_slot
        ring_specs["udp_to_crypto"] = datagram_slot
        for ring_name, slot_size in ring_specs.items():
            # Anonymous memory: only the processes forked from here can reach a ring.
            self.rt.rings[ring_name] = Ring.create(ring_name, slots=RING_SLOTS, slot_size=slot_size)
        try:
            for name in remove_dead_segments(self.name):
                log.info("removed %s, left by a gateway that is gone", name)
            self.rt.stats = st.StatsRegion.create(
                stats_segment_name(self.name, os.getpid()),
                workers=workers,
                max_peers=max(1024, len(cfg.peers)),
            )
        except (OSError, ValueError) as exc:
            raise SupervisorError(f"cannot create the stats segment: {exc}") from exc
        self.rt.stats.attach_process("supervisor")  # its pid, for CPU and RSS in /metrics
        self.rt.stats.mtu = self._mtu
        self.rt.link_watch = LinkWatch(self.rt.queues[0].fileno())
        try:
            self.rt.udp = UdpIo(
                cfg.interface.listen_port, cfg.udp.receive_buffer, cfg.udp.send_buffer
            )
        except OSError as exc:
            raise SupervisorError(
                f"cannot bind UDP port {cfg.interface.listen_port}: {exc.strerror}"
            ) from exc
        self.rt.stats.listen_port = self.rt.udp.port
        self._control_parent, self._control_child = socket.socketpair(
            socket.AF_UNIX, socket.SOCK_SEQPACKET
        )
        self._control_parent.setblocking(False)
        self._control_child.setblocking(False)
        self._runstate = RunState()
        try:
            self.uapi = UapiServer.for_interface(self.name, _NoBackend())
        except OSError as exc:
            raise SupervisorError(
                f"cannot create the control socket for {self.name}: {exc}"
            ) from exc
        roles = [*(f"worker{i}" for i in range(workers)), "crypto", "udp"]
        if cfg.dns is not None:
            roles.append("dns")
            self._mappings = MappingPair.create()
        beats = self._heartbeats = Heartbeats(roles)
        for i in range(workers):
            self.children[f"worker{i}"] = Child(
                f"worker{i}",
                self._worker_target(i),
                process_name=f"fzgw-tun{i}",
                fds=self._worker_fds(i),
                heartbeat=beats[f"worker{i}"],
            )
        self.children["crypto"] = Child(
            "crypto",
            self._crypto_target,
            process_name="fzgw-crypto",
            fds=self._crypto_fds,
            heartbeat=beats["crypto"],
        )
        self.children["udp"] = Child(
            "udp",
            self._udp_target,
            process_name="fzgw-udp",
            fds=self._udp_fds,
            heartbeat=beats["udp"],
        )
        if cfg.dns is not None:
            self.children["dns"] = Child(
                "dns",
                self._dns_target,
                process_name="fzgw-dns",
                fds=self._dns_fds,
                heartbeat=beats["dns"],
            )
        log.info(
            "interface %s: public key %s, UDP port %d, MTU %d, %d workers, %d peers",
            self.name,
            encode_key(cfg.interface.public_key),
            self.rt.udp.port,
            cfg.interface.mtu,
            workers,
            len(cfg.peers),
        )

    def _stats(self) -> st.StatsRegion:
        if self.rt.stats is None:
            raise SupervisorError("stats region missing")
        return self.rt.stats

    # ---- what each child keeps (fds) and runs --------------------------------------------

    def _ring_fds(self, consumes: list[str], produces: list[str]) -> ChildFds:
        """Both eventfds of each ring (a producer wakes its consumer and vice versa); the
        ones the child's epoll waits on come first."""
        rings = self.rt.rings
        wake = [rings[n].consumer_fd() for n in consumes] + [
            rings[n].producer_fd() for n in produces
        ]
        other = [rings[n].producer_fd() for n in consumes] + [
            rings[n].consumer_fd() for n in produces
        ]
        return ChildFds(rings=tuple(wake), other=tuple(other))

    def _worker_fds(self, index: int) -> Callable[[], ChildFds]:
        def fds() -> ChildFds:
            ring_fds = self._ring_fds([f"crypto_to_worker{index}"], [f"worker{index}_to_crypto"])
            return replace(ring_fds, other=(*ring_fds.other, self.rt.queues[index].fileno()))

        return fds

    def _udp_fds(self) -> ChildFds:
        ring_fds = self._ring_fds(["crypto_to_udp"], ["udp_to_crypto"])
        udp = () if self.rt.udp is None else (self.rt.udp.fileno(),)
        return replace(ring_fds, other=(*ring_fds.other, *udp))

    def _crypto_fds(self) -> ChildFds:
        workers = range(self.options.workers)
        ring_fds = self._ring_fds(
            ["udp_to_crypto", *(f"worker{i}_to_crypto" for i in workers)],
            ["crypto_to_udp", *(f"crypto_to_worker{i}" for i in workers)],
        )
        extra: list[int] = []
        if self._control_child is not None:
            extra.append(self._control_child.fileno())
        if self.uapi is not None:
            extra += self.uapi.fds()
        if self._runstate is not None:
            extra += self._runstate.fds()
        if self._mappings is not None:
            extra.append(self._mappings.crypto.fileno())
        return replace(ring_fds, other=(*ring_fds.other, *extra))

    def _dns_fds(self) -> ChildFds:
        return ChildFds(other=() if self._mappings is None else (self._mappings.dns.fileno(),))

    def _forget_secrets(self) -> None:
        """In a worker or the UDP process: drop key material only the crypto process needs
        (its run-state memfd is already closed)."""
        cfg = self.config
        interface = replace(cfg.interface, private_key=bytes(len(cfg.interface.private_key)))
        self.config = replace(cfg, interface=interface, peers=())
        self._runstate = None

    def _worker_target(self, index: int) -> Callable[[], None]:
        def target() -> None:
            self._forget_secrets()
            block = self._stats().attach_process(f"worker{index}")
            rings = self.rt.rings
            report_ready()
            try:
                run_worker(
                    self.rt.queues[index],
                    rings[f"worker{index}_to_crypto"],
                    rings[f"crypto_to_worker{index}"],
                    block,
                    self.children[f"worker{index}"].heartbeat,
                )
            except (TunError, OSError) as exc:
                if device_gone_error(exc):
                    raise DeviceGone(str(exc)) from exc
                raise

        return target

    def _crypto_target(self) -> None:
        """In the forked crypto child: its inputs as they are now (reloaded config, moved port)."""
        if self._control_child is None:
            raise SupervisorError("control socket missing")
        rings = self.rt.rings
        workers = range(self.options.workers)
        crypto_main(
            CryptoInputs(
                config_path=self.options.config_path,
                config=self.config,
                rings=CryptoRings(
                    from_udp=rings["udp_to_crypto"],
                    to_udp=rings["crypto_to_udp"],
                    from_workers=[rings[f"worker{i}_to_crypto"] for i in workers],
                    to_workers=[rings[f"crypto_to_worker{i}"] for i in workers],
                ),
                stats=self._stats(),
                control=self._control_child,
                uapi=self.uapi,
                runstate=self._runstate,
                listen_port=self._port(),
                heartbeat=self.children["crypto"].heartbeat,
                mtu=self._mtu,  # the device's now, not the config's: `ip link` may have set it
                mappings=None if self._mappings is None else self._mappings.crypto,
            )
        )

    def _dns_target(self) -> None:
        """In the forked DNS child: the peers' addresses and grants, none of the keys."""
        cfg = self.config
        interface = replace(cfg.interface, private_key=bytes(len(cfg.interface.private_key)))
        peers = tuple(replace(p, preshared_key=None) for p in cfg.peers)
        self.config = replace(cfg, interface=interface, peers=peers)
        self._runstate = None
        block = self._stats().attach_process("dns")
        run_dns(
            self.config,
            None if self._mappings is None else self._mappings.dns,
            block,
            self.children["dns"].heartbeat,
        )

    def _udp_target(self) -> None:
        self._forget_secrets()
        block = self._stats().attach_process("udp")
        if self.rt.udp is None:
            raise SupervisorError("UDP socket missing")
        report_ready()
        stats = self._stats()
        run_udp(
            self.rt.udp,
            self.rt.rings["udp_to_crypto"],
            self.rt.rings["crypto_to_udp"],
            block,
            self.children["udp"].heartbeat,
            public_key=lambda: stats.public_key,  # the crypto process publishes it
        )

    # ---- children -----------------------------------------------------------------------

    # ---- main loop ----------------------------------------------------------------------

    def run(self) -> int:
        # Take over the stop signals before setup() creates the device and the rings: a
        # SIGTERM during setup would otherwise kill us by default, leaving /dev/shm segments.
        signals: list[int] = []
        wake_r, wake_w, old_wakeup = _catch_signals(signals)
        try:
            self.setup()
        except SupervisorError as exc:
            log.error("%s", exc)
            self.teardown()
            signal.set_wakeup_fd(old_wakeup)
            wake_r.close()
            wake_w.close()
            return 1
        while signals:  # arrived during setup
            self._signal(signals.pop(0))
        epoll = self._epoll = select.epoll()
        epoll.register(wake_r.fileno(), select.EPOLLIN)
        control = self._control_parent
        if control is not None:
            epoll.register(control.fileno(), select.EPOLLIN)
        watch = self.rt.link_watch
        if watch is not None:
            epoll.register(watch.fileno(), select.EPOLLIN)
        try:
            if not self.stopping:
                self._start_children(epoll)
            self._loop(epoll, wake_r, control, signals)
        finally:
            signal.set_wakeup_fd(old_wakeup)
            self.notifier.stopping(f"stopping {self.name}")
            self.stop_children()
            self.teardown()
            epoll.close()
            wake_r.close()
            wake_w.close()
        return self.exit_code

    def _start_children(self, epoll: select.epoll) -> None:
        """Fork every child; READY=1 follows once each reports it entered its loop."""
        for child in self.children.values():
            self._spawn(child)
            child.watch(epoll)
        self._start_metrics()

    def _loop(
        self,
        epoll: select.epoll,
        wake_r: socket.socket,
        control: socket.socket | None,
        signals: list[int],
    ) -> None:
        watchdog = watchdog_interval()
        next_tick = next_look = time.monotonic()
        working = False
        while not self.stopping:
            wake_at = min([next_tick, next_look, *self._restarts_due()])
            timeout = max(0.0, wake_at - time.monotonic())
            for fd, _ in epoll.poll(timeout):
                if fd == wake_r.fileno():
                    with contextlib.suppress(BlockingIOError):
                        wake_r.recv(4096)
                elif control is not None and fd == control.fileno():
                    self._control_messages(control, epoll)
                elif self.rt.link_watch is not None and fd == self.rt.link_watch.fileno():
                    mtu = self.rt.link_watch.read()
                    if mtu is not None:
                        self._follow_mtu(mtu)
                else:
                    self._child_event(fd, epoll)
            while signals:
                self._signal(signals.pop(0))
            self._restart_due_children(epoll)
            if not self._announced and not self.stopping and self.readiness()[0]:
                self._announced = True
                self.notifier.ready(self._status())
                log.info("gateway %s running: the data plane forwards", self.name)
            now = time.monotonic()
            if now >= next_look:
                working = self._check_heartbeats()
                next_look = now + BUSY_LOOK_INTERVAL
            if now >= next_tick:
                next_tick = now + (min(TICK, watchdog / 2) if watchdog else TICK)
                self._tick()
            if not working:
                next_look = max(next_look, next_tick)

    def _spawn(self, child: Child) -> None:
        self._stalls[child.role] = Stall()
        options = self.options
        child.spawn(
            lambda: setup_logging(
                options.log_filter, options.log_format, process=child.process_name
            )
        )

    def _restarts_due(self) -> list[float]:
        return [c.restart_at for c in self.children.values() if c.restart_at is not None]

    def _restart_due_children(self, epoll: select.epoll) -> None:
        now = time.monotonic()
        for child in self.children.values():
            if child.restart_at is not None and child.restart_at <= now and not self.stopping:
                self._spawn(child)
                child.watch(epoll)

    def _child_event(self, fd: int, epoll: select.epoll) -> None:
        """A child's readiness pipe or pidfd became readable."""
        for child in self.children.values():
            if child.ready_fd == fd:
                child.read_ready(epoll)
                return
            if child.pidfd == fd:
                if not child.exited():
                    return  # a stale event for an fd number that a new child's pidfd reuses
                epoll.unregister(fd)
                self._child_exited(child)
                return

    def _control_messages(self, sock: socket.socket, epoll: select.epoll) -> None:
        for message in receive_messages(sock, decode_to_supervisor):
            self._change_listen_port(message.port, epoll)

    def _change_listen_port(self, port: int, epoll: select.epoll) -> None:
        """Bind the new port, then move the UDP process onto it (sessions stay)."""
        try:
            new = UdpIo(port, self.config.udp.receive_buffer, self.config.udp.send_buffer)
        except OSError as exc:
            log.error("listen port %d: %s; keeping port %d", port, exc.strerror, self._port())
            return
        child = self.children["udp"]
        child.kill(epoll)
        old, self.rt.udp = self.rt.udp, new
        if self.rt.stats is not None:
            self.rt.stats.listen_port = new.port
        if old is not None:
            old.close()
        self._spawn(child)
        child.watch(epoll)
        if self._control_parent is not None:
            send_message(self._control_parent, ListenPortChanged(new.port))
        log.info("listening on UDP port %d", new.port)

    def _follow_mtu(self, mtu: int) -> None:
        """The TUN device's MTU changed (ip link, or a reload): pad to it and report it."""
        if mtu == self._mtu:
            return
        log.info("%s: MTU changed from %d to %d", self.name, self._mtu, mtu)
        self._mtu = mtu
        if self.rt.stats is not None:
            self.rt.stats.mtu = mtu
        if self._control_parent is not None:
            try:
                send_message(self._control_parent, MtuChanged(mtu))
            except OSError as exc:  # a restarted crypto process starts from self._mtu
                log.error("MTU %d not sent to the crypto process: %s", mtu, exc)

    def _port(self) -> int:
        return self.rt.udp.port if self.rt.udp is not None else 0

    def _signal(self, sig: int) -> None:
        if sig == signal.SIGHUP:
            if self._announced:  # systemd's reload protocol; READY=1 again when done
                self.notifier.notify(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")
            self.reload()
            if self._announced:
                self.notifier.ready(self._status())
            return
        log.info("received %s, stopping", signal.Signals(sig).name)
        self.stopping = True

    def _child_exited(self, child: Child) -> None:
        """Reap a child that died; schedule its restart after its backoff delay."""
        pid = child.pid
        ran = time.monotonic() - child.ready_at if child.ready else 0.0
        status = child.reap()
        code = os.waitstatus_to_exitcode(status)
        what = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
        if code == EXIT_DEVICE_GONE or self._device_name() is None:
            # As wireguard-go: a deleted device ends the gateway, cleanly (exit status 0).
            log.info("TUN device %s was deleted: shutting down", self.name)
            self.stopping = True
            return
        if self.stopping:
            return
        now = time.monotonic()
        delay = child.backoff.next_delay(ran, now)
        if delay is None:
            log.critical(
                "%s (pid %d) died: %s; it has failed for %.0f s without running: giving up",
                child.role,
                pid,
                what,
                child.backoff.failing_for(now),
            )
            self.stopping = True
            self.exit_code = 1
            return
        log.error("%s (pid %d) died: %s; restarting in %.1f s", child.role, pid, what, delay)
        if self.rt.stats is not None:
            self.rt.stats.process_block("supervisor")[st.CHILD_RESTARTS] += 1
        child.restart_at = now + delay

    def _tick(self) -> None:
        if self.rt.stats is not None:
            self.rt.stats.sample_busy()
            for ring_name, ring in self.rt.rings.items():
                st.copy_ring_counters(self.rt.stats.ring_block(ring_name), ring.stats())
        if not self.notifier.enabled or not self._announced:
            return
        if not self._unhealthy() and self._device_name() is not None:
            self.notifier.watchdog()
        now = time.monotonic()
        if self._announced and now >= self._next_status:
            self._next_status = now + STATUS_INTERVAL
            self.notifier.status(self._status())

    def _check_heartbeats(self) -> bool:
        """SIGKILL every child stuck with work waiting (its exit restarts it); returns
        whether any child carries traffic or is stuck."""
        now = time.monotonic()
        working = False
        for child in self.children.values():
            stuck = self._stuck_for(child, now)
            stall = self._stalls.get(child.role)
            working = working or stuck > 0 or (stall is not None and stall.advanced > BUSY_TURNS)
            if stuck >= HANG_TIMEOUT:
                log.error(
                    "%s (pid %d) is hung: work waiting and no progress for %.1f s; restarting it",
                    child.role,
                    child.pid,
                    stuck,
                )
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, signal.SIGKILL)
        return working

    def _stuck_for(self, child: Child, now: float) -> float:
        """Look at a running child's heartbeat: seconds without progress with work waiting."""
        stall = self._stalls.get(child.role)
        if stall is None or not child.pid or not child.ready:
            return 0.0
        beat = child.heartbeat
        progress = beat.progress()
        work = True  # awake: a loop turn never takes seconds
        if beat.is_asleep():
            fds = child.fds()
            work = ready_fds(fds.rings, beat.watched(), set(fds.other))
        return stall.look(progress, work, now)

    def _status(self) -> str:
        """One line for `systemctl status`: peers and throughput since the last line."""
        stats = self.rt.stats
        if stats is None:
            return f"{self.options.workers} workers"
        snap = stats.snapshot(sample_processes=False, peer_limit=0)
        now = time.monotonic()
        rx, tx = snap.totals.udp_rx_bytes, snap.totals.udp_tx_bytes
        rates = ""
        if self._last_status is not None:
            then, rx_then, tx_then = self._last_status
            elapsed = max(now - then, 1e-3)
            rates = f", in {_rate(rx - rx_then, elapsed)}, out {_rate(tx - tx_then, elapsed)}"
        self._last_status = (now, rx, tx)
        peers, active = stats.peers.count(handshake_since=snap.taken_at - ACTIVE_PEER_SECONDS)
        return f"{peers} peers ({active} active){rates}, {self.options.workers} workers"

    def _start_metrics(self) -> None:
        listen = self.options.metrics_listen or self.config.metrics.listen
        stats = self.rt.stats
        if stats is None:
            return
        try:
            self.metrics = MetricsServer(
                listen, snapshot=self._metrics_snapshot, ready=self.readiness, device=self.name
            )
        except OSError as exc:
            log.error("metrics: cannot listen on %s:%d: %s", *listen, exc.strerror)
            return
        self.metrics.start()

    def _metrics_snapshot(self) -> st.StatsSnapshot:
        if self.rt.stats is None:
            raise RuntimeError("stats segment is gone")  # the scrape gets a 500
        return self.rt.stats.snapshot(peer_limit=self.config.metrics.max_peer_series)

    def readiness(self) -> tuple[bool, str]:
        name = self._device_name()
        if name is None:
            return False, f"TUN device {self.name} was deleted"
        if interface_up(name) is False:
            return False, f"TUN device {name} is down"
        unhealthy = self._unhealthy()
        if unhealthy:
            return False, "; ".join(f"{role} {why}" for role, why in unhealthy)
        if self.rt.udp is None:
            return False, "UDP socket not bound"
        return True, "ok"

    def _device_name(self) -> str | None:
        """The TUN device's current name, asked through our own queue fd, so a device
        moved to another network namespace still counts; None once it was deleted."""
        if not self.rt.queues:
            return None
        try:
            return queue_device_name(self.rt.queues[0].fileno())
        except OSError:
            return None

    def _unhealthy(self) -> list[tuple[str, str]]:
        """Children that do not run their loop right now, with why."""
        found = []
        for child in self.children.values():
            if child.restart_at is not None:
                found.append((child.role, "is waiting to restart"))
            elif not child.pid:
                found.append((child.role, "is not running"))
            elif not child.ready:
                found.append((child.role, "is starting"))
            elif (stall := self._stalls.get(child.role)) is not None and stall.since is not None:
                found.append((child.role, "has work waiting but makes no progress"))
            elif (state := self._states.problem(child.pid)) is not None:
                found.append((child.role, state))
        return found

    def reload(self) -> None:
        try:
            config = load_config(self.options.config_path)
        except ConfigError as exc:
            log.error("reload refused, keeping the running config:\n%s", exc)
            return
        old, self.config = self.config, config
        self._reload_interface(old.interface, config.interface)
        if self._control_parent is not None:
            try:
                send_message(self._control_parent, Reload())
            except OSError as exc:
                log.error("reload: cannot reach the crypto process: %s", exc)
                return
        # After the crypto process was told: its mappings follow the resources first.
        self._reload_dns(old, config)
        log.info("reloaded %s: %d peers", self.options.config_path, len(config.peers))

    def _reload_dns(self, old: GatewayConfig, new: GatewayConfig) -> None:
        """A DNS server whose inputs changed starts over with them (pending queries are
        lost: clients retry; names keep their proxy pairs, see gateway/dns/proxy.py)."""
        child = self.children.get("dns")
        if (child is None) != (new.dns is None):
            log.warning("reload: starting or stopping the DNS server takes a restart")
            return
        if child is None or _dns_inputs(old) == _dns_inputs(new) or self._epoll is None:
            return
        child.kill(self._epoll)
        self._spawn(child)
        child.watch(self._epoll)
        log.info("reload: DNS server restarted with the new resources, grants and upstreams")

    def _reload_interface(self, old: InterfaceConfig, new: InterfaceConfig) -> None:
        """Apply a reloaded [interface]: listen port, MTU and addresses (not the name)."""
        if new.name != old.name:
            log.warning("reload: renaming %s to %s takes a restart", old.name, new.name)
        if new.listen_port != old.listen_port and self._epoll is not None:
            self._change_listen_port(new.listen_port, self._epoll)
        if new.mtu == old.mtu and new.addresses == old.addresses:
            return
        if self._device_name() != self.name or interface_up(self.name) is None:
            log.warning("reload: %s is not in this namespace: MTU and addresses kept", self.name)
            return
        manager = self.rt.manager
        if manager is None:
            return
        # An MTU the config did not change stays as it is, even if `ip link` changed it.
        mtu = new.mtu if new.mtu != old.mtu else self._mtu
        try:
            manager.configure(mtu=mtu, addresses=new.addresses)
            for address in set(old.addresses) - set(new.addresses):
                manager.remove_address(address)
        except TunError as exc:
            log.error("reload: %s", exc)
            return
        self._follow_mtu(mtu)
        log.info("reload: %s has MTU %d and %d addresses", self.name, mtu, len(new.addresses))

    # ---- shutdown -----------------------------------------------------------------------

    def stop_children(self) -> None:
        stop_all(self.children.values())

    def teardown(self) -> None:
        if self.metrics is not None:
            self.metrics.close()
        if self.rt.link_watch is not None:
            self.rt.link_watch.close()
        if self.uapi is not None:
            self.uapi.close()  # removes the socket file only if it is still ours
        if self.rt.udp is not None:
            self.rt.udp.close()
        here = bool(self.rt.queues) and self._device_name() == self.name
        for queue in self.rt.queues:
            queue.close()
        # A non-persistent TUN device disappears with its last queue; make sure, unless it
        # was deleted or moved away (a device of that name here now is not ours).
        if here and self.rt.manager is not None and self.rt.manager.exists():
            with contextlib.suppress(TunError, OSError):
                self.rt.manager.delete()
        for ring in self.rt.rings.values():
            with contextlib.suppress(OSError):
                ring.close()
            with contextlib.suppress(OSError):
                ring.unlink()
        if self.rt.stats is not None:
            with contextlib.suppress(OSError):
                self.rt.stats.close()
                self.rt.stats.unlink()
        for sock in (self._control_parent, self._control_child):
            if sock is not None:
                sock.close()
        if self._mappings is not None:
            self._mappings.close()
        if self._runstate is not None:
            self._runstate.close()


def _dns_inputs(config: GatewayConfig) -> tuple[object, ...]:
    """What the DNS process is built from (gateway/dns/process.py build_server)."""
    peers = tuple((p.public_key, p.allowed_ips, p.resources) for p in config.peers)
    return (config.dns, config.resources, config.interface.addresses, peers)


def _rate(count: int, seconds: float) -> str:
    value = count / seconds
    for unit in ("B/s", "KiB/s", "MiB/s"):
        if value < 1024:  # noqa: PLR2004 (one KiB)
            return f"{value:.0f} {unit}" if unit == "B/s" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB/s"


def _catch_signals(signals: list[int]) -> tuple[socket.socket, socket.socket, int]:
    """Record SIGTERM/SIGINT/SIGHUP in `signals` and wake a socket for each one.

    Returns (read end, write end, previous wakeup fd) for the main loop's epoll.
    """
    wake_r, wake_w = socket.socketpair()
    wake_r.setblocking(False)
    wake_w.setblocking(False)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda s, _f: signals.append(s))
    return wake_r, wake_w, signal.set_wakeup_fd(wake_w.fileno())


def run_gateway(options: Options) -> int:
    try:
        # No local name for the config: the supervisor's is the only reference, which the
        # workers and the UDP process drop after fork (Supervisor._forget_secrets).
        supervisor = Supervisor(options, load_config(options.config_path, create_private_key=True))
    except ConfigError as exc:
        log.error("%s", exc)
        return 1
    return supervisor.run()
