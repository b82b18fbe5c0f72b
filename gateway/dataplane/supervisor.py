"""The supervisor: starts the children, watches them, restarts them, and stops them.

It owns everything a child needs (`runtime.py`), so a restarted child is forked from the
same objects again (`targets.py` says what each child runs and keeps). Its parts, each with
one job: `Health` (hangs and readiness), `ConfigReload` (SIGHUP), `StatusLine` (systemd's
status line); what is left here is the main loop: one epoll on the children's pidfds and
readiness pipes, a signal wake-up socket, the control socket from the crypto process and
the TUN device's link watch, with a tick for counters, the watchdog and hang checks.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from gateway import topology
from gateway.config import ConfigError, load_config
from gateway.dataplane.children import EXIT_DEVICE_GONE, Child, stop_all
from gateway.dataplane.control import (
    ListenPortChanged,
    MtuChanged,
    ReloadDone,
    decode_to_supervisor,
    receive_messages,
    send_message,
)
from gateway.dataplane.handover import (
    CONTROL,
    UDP,
    FdStore,
    Inherited,
    exec_handover,
)
from gateway.dataplane.health import Health
from gateway.dataplane.reload import ConfigReload
from gateway.dataplane.runtime import Runtime, SupervisorError, bind_udp
from gateway.dataplane.status import StatusLine
from gateway.dataplane.targets import ChildTargets, Running
from gateway.dataplane.upgrade import UpgradeCheck
from gateway.keys import encode_key
from gateway.telemetry import stats as st
from gateway.telemetry.logsetup import setup_logging
from gateway.telemetry.sdnotify import Notifier, watchdog_interval
from tunio.device_state import interface_up

if TYPE_CHECKING:
    from gateway.telemetry.metrics import MetricsServer

log = logging.getLogger(__name__)

TICK = 1.0
# While children carry traffic their heartbeats are read this often, so a hang is seen
# sooner; otherwise with the tick only.
BUSY_LOOK_INTERVAL = 0.5
STATUS_INTERVAL = 2.0  # seconds between STATUS= lines to systemd
_IGNORED_ACROSS_EXEC = (signal.SIGHUP, signal.SIGUSR2)
RELOAD_CONFIRM_TIMEOUT = 10.0  # READY=1 after a reload at the latest, applied or not


@dataclass
class Options:
    config_path: Path
    workers: int
    log_filter: str = "info"
    log_format: str | None = None
    metrics_listen: tuple[str, int] | None = None


class Supervisor:
    def __init__(
        self,
        options: Options,
        running: Running,
        runtime: Runtime,
        notifier: Notifier | None = None,
    ) -> None:
        self.options = options
        self.running = running
        self.runtime = runtime
        self.name = running.config.interface.name
        self.children = ChildTargets(options.workers, runtime, running).children
        self.health = Health(self.children)
        self.status = StatusLine(runtime.stats, options.workers)
        self.reloader = ConfigReload(
            options.config_path,
            running=running,
            runtime=runtime,
            crypto_child=self.children[topology.CRYPTO],
            dns_child=self.children.get(topology.DNS),
            restart=self._restart,
            move_port=self._move_port,
            follow_mtu=self._follow_mtu,
        )
        self.stopping = False
        self.exit_code = 0
        self.notifier = Notifier() if notifier is None else notifier
        self.fdstore = FdStore(self.notifier)
        self.metrics: MetricsServer | None = None
        self._epoll: select.epoll | None = None  # made once setup-time signals were handled
        self._announced = False  # READY=1 sent
        self._next_status = 0.0
        self._upgrade_check: UpgradeCheck | None = None  # SIGUSR2: the new version's check
        self._reload_due: float | None = None  # a reload the crypto process has not applied
        config = running.config
        log.info(
            "interface %s: public key %s, UDP port %d, MTU %d, %d workers, %d peers",
            self.name,
            encode_key(config.interface.public_key),
            runtime.udp.port,
            config.interface.mtu,
            options.workers,
            len(config.peers),
        )

    # ---- main loop ----------------------------------------------------------------------

    def run(self, wake_r: socket.socket, signals: list[int]) -> int:
        """Until stopped: the children run and are watched; then they and the runtime are
        stopped and closed. Returns the exit status."""
        while signals:  # arrived during setup
            self._signal(signals.pop(0))
        epoll = self._epoll = select.epoll()
        epoll.register(wake_r.fileno(), select.EPOLLIN)
        epoll.register(self.runtime.control.fileno(), select.EPOLLIN)
        # From now on a successor (systemd's restart after a crash) finds them.
        self.fdstore.keep(self.runtime.handover_fds())
        try:
            if not self.stopping:
                self._start_children(epoll)
                self._after_fork(epoll)
            self._loop(epoll, wake_r, signals)
        finally:
            self.notifier.stopping(f"stopping {self.name}")
            if self._upgrade_check is not None:  # stopped while checking: no upgrade
                self._upgrade_check.finish()
            self.stop_children()
            self.fdstore.forget(list(self.runtime.handover_fds()))  # a clean stop
            self.teardown()
            epoll.close()
        return self.exit_code

    def _start_children(self, epoll: select.epoll) -> None:
        """Fork every child; READY=1 follows once each reports it entered its loop."""
        for child in self.children.values():
            self._spawn(child)
            child.watch(epoll)

    def _after_fork(self, epoll: select.epoll) -> None:
        """What forwarding does not wait for (a restart forwards sooner): a kept device's
        configuration and the link watch (both load pyroute2), the metrics server."""
        try:
            self.runtime.tun.configure_kept()
        except SupervisorError as exc:
            log.error("%s", exc)
            self.stopping = True
            self.exit_code = 1
            return
        epoll.register(self.runtime.tun.watch_link().fileno(), select.EPOLLIN)
        self._start_metrics()

    def _loop(self, epoll: select.epoll, wake_r: socket.socket, signals: list[int]) -> None:
        watchdog = watchdog_interval()
        next_tick = next_look = time.monotonic()
        working = False
        while not self.stopping:
            wake_at = min([next_tick, next_look, *self._restarts_due(), *self._check_due()])
            timeout = max(0.0, wake_at - time.monotonic())
            for fd, _ in epoll.poll(timeout):
                self._event(fd, epoll, wake_r)
            while signals:
                self._signal(signals.pop(0))
            self._restart_due_children(epoll)
            check = self._upgrade_check
            if check is not None and (check.exited() or check.deadline <= time.monotonic()):
                self._upgrade_checked(check)
            if not self._announced and not self.stopping and self.readiness()[0]:
                self._announced = True
                self.notifier.ready(self.status.line())
                log.info("gateway %s running: the data plane forwards", self.name)
            now = time.monotonic()
            if now >= next_look:
                working = self.health.kill_hung()
                next_look = now + BUSY_LOOK_INTERVAL
            if now >= next_tick:
                next_tick = now + (min(TICK, watchdog / 2) if watchdog else TICK)
                self._tick()
            if not working:
                next_look = max(next_look, next_tick)

    def _event(self, fd: int, epoll: select.epoll, wake_r: socket.socket) -> None:
        link_watch = self.runtime.tun.link_watch
        if fd == wake_r.fileno():
            with contextlib.suppress(BlockingIOError):
                wake_r.recv(4096)
        elif fd == self.runtime.control.fileno():
            for message in receive_messages(self.runtime.control, decode_to_supervisor):
                if isinstance(message, ReloadDone):
                    self.reloader.acknowledged(message)
                    if message.generation == self.reloader.generation:
                        self._reload_done()  # READY=1: the newest reload is applied
                else:
                    self._change_listen_port(message.port, epoll)
        elif self._upgrade_check is not None and fd == self._upgrade_check.fileno():
            pass  # the check exited: the loop finishes it
        elif link_watch is not None and fd == link_watch.fileno():
            mtu = link_watch.read()
            if mtu is not None:
                self._follow_mtu(mtu)
        else:
            self._child_event(fd, epoll)

    # ---- children -----------------------------------------------------------------------

    def _spawn(self, child: Child) -> None:
        self.health.forked(child)
        options = self.options
        child.spawn(
            lambda: setup_logging(
                options.log_filter, options.log_format, process=child.process_name
            )
        )
        if child.role == topology.CRYPTO:
            self.reloader.crypto_started()

    def _restart(self, child: Child) -> bool:
        """Kill and fork `child` again on purpose; False before the children started."""
        if self._epoll is None:
            return False
        child.kill(self._epoll)
        self._spawn(child)
        child.watch(self._epoll)
        return True

    def _check_due(self) -> list[float]:
        return [] if self._upgrade_check is None else [self._upgrade_check.deadline]

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

    def _child_exited(self, child: Child) -> None:
        """Reap a child that died; schedule its restart after its backoff delay."""
        pid = child.pid
        ran = time.monotonic() - child.ready_at if child.ready else 0.0
        status = child.reap()
        code = os.waitstatus_to_exitcode(status)
        what = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
        if code == EXIT_DEVICE_GONE or self.runtime.tun.device_name() is None:
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
        self.runtime.stats.process_block(topology.SUPERVISOR)[st.CHILD_RESTARTS] += 1
        child.restart_at = now + delay

    # ---- what the crypto process, `ip link` and signals ask for ---------------------------

    def _move_port(self, port: int) -> None:
        if self._epoll is not None:
            self._change_listen_port(port, self._epoll)

    def _change_listen_port(self, port: int, epoll: select.epoll) -> None:
        """Bind the new port, then move the UDP process onto it (sessions stay)."""
        rt = self.runtime
        try:
            new = bind_udp(port, self.running.config)
        except OSError as exc:
            log.error("listen port %d: %s; keeping port %d", port, exc.strerror, rt.udp.port)
            return
        child = self.children[topology.UDP]
        child.kill(epoll)
        old, rt.udp = rt.udp, new
        rt.stats.listen_port = new.port
        self.fdstore.replace({UDP: new.fileno()})
        old.close()
        self._spawn(child)
        child.watch(epoll)
        send_message(rt.control, ListenPortChanged(new.port))
        log.info("listening on UDP port %d", new.port)

    def _follow_mtu(self, mtu: int) -> None:
        """The TUN device's MTU changed (ip link, or a reload): pad to it and report it."""
        if mtu == self.running.mtu:
            return
        log.info("%s: MTU changed from %d to %d", self.name, self.running.mtu, mtu)
        self.running.mtu = mtu
        self.runtime.stats.mtu = mtu
        try:
            send_message(self.runtime.control, MtuChanged(mtu))
        except OSError as exc:  # a restarted crypto process starts from running.mtu
            log.error("MTU %d not sent to the crypto process: %s", mtu, exc)

    def _signal(self, sig: int) -> None:
        if sig == signal.SIGHUP:
            if self._announced:  # systemd's reload protocol; READY=1 again when done
                self.notifier.notify(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")
            if self.reloader.reload():  # READY=1 once the crypto process applied it
                self._reload_due = time.monotonic() + RELOAD_CONFIRM_TIMEOUT
            else:
                self._reload_done()
            return
        if sig == signal.SIGUSR2:
            self._upgrade()
            return
        log.info("received %s, stopping", signal.Signals(sig).name)
        self.stopping = True

    def _reload_done(self) -> None:
        """READY=1 with a status line that counts the reloaded peers."""
        self._reload_due = None
        if self._announced:
            self.notifier.ready(self.status.line())

    # ---- upgrade in place (SIGUSR2) --------------------------------------------------------

    def _upgrade(self) -> None:
        """SIGUSR2: start the installed version's check (the loop goes on meanwhile)."""
        if self._upgrade_check is not None:
            log.warning("SIGUSR2: an upgrade is already being checked")
            return
        log.info("SIGUSR2: checking %s before upgrading in place to it", sys.argv[0])
        try:
            check = UpgradeCheck.start(sys.argv[0], self.options.config_path)
        except OSError as exc:
            log.error("upgrade refused: cannot run %s: %s", sys.argv[0], exc.strerror)
            return
        self._upgrade_check = check
        if self._epoll is not None:
            self._epoll.register(check.fileno(), select.EPOLLIN)

    def _upgrade_checked(self, check: UpgradeCheck) -> None:
        """The check ended (or took too long): exec the new version, or stay."""
        self._upgrade_check = None
        if self._epoll is not None:
            self._epoll.unregister(check.fileno())
        problem = check.finish()
        if problem is not None:
            log.error("upgrade refused, this version keeps running: %s", problem)
            return
        self._exec_new_version()

    def _exec_new_version(self) -> None:
        """Exec the installed firezone-gw with the device, socket and state handed over
        (handover.py); the children keep forwarding until the new code forks its own. An
        exec that fails leaves this version running."""
        command = [sys.argv[0], *sys.argv[1:]]
        log.info("upgrading in place: exec %s", command[0])
        self.notifier.status(f"upgrading {self.name} in place")
        if self.metrics is not None:  # its port is bound again by the new code
            self.metrics.close()
            self.metrics = None
        fds = {**self.runtime.handover_fds(), CONTROL: self.runtime.control.fileno()}
        pids = [child.pid for child in self.children.values() if child.pid]
        for handler in logging.getLogger().handlers:
            handler.flush()
        # Until the new code catches them, SIGHUP and SIGUSR2 would end the process (their
        # default); ignored, they are lost instead (an ignored disposition survives exec).
        caught = {sig: signal.signal(sig, signal.SIG_IGN) for sig in _IGNORED_ACROSS_EXEC}
        error = exec_handover(command, fds, pids)
        for sig, previous in caught.items():
            signal.signal(sig, signal.SIG_DFL if previous is None else previous)
        log.error("upgrade: exec %s failed: %s; this version keeps running", command[0], error)
        self._start_metrics()

    # ---- counters, systemd and /metrics ---------------------------------------------------

    def _tick(self) -> None:
        stats = self.runtime.stats
        stats.sample_busy()
        for ring_name, ring in self.runtime.rings.by_name().items():
            st.copy_ring_counters(stats.ring_block(ring_name), ring.stats())
        if not self.notifier.enabled or not self._announced:
            return
        if not self.health.problems() and self.runtime.tun.device_name() is not None:
            self.notifier.watchdog()
        now = time.monotonic()
        if self._reload_due is not None and now >= self._reload_due:
            log.warning("reload: the crypto process did not confirm it in time")
            self._reload_done()
        if now >= self._next_status:
            self._next_status = now + STATUS_INTERVAL
            self.notifier.status(self.status.line())

    def _start_metrics(self) -> None:
        from gateway.telemetry.metrics import MetricsServer  # noqa: PLC0415 - http.server: after the fork

        listen = self.options.metrics_listen or self.running.config.metrics.listen
        try:
            self.metrics = MetricsServer(
                listen, snapshot=self._metrics_snapshot, ready=self.readiness, device=self.name
            )
        except OSError as exc:
            log.error("metrics: cannot listen on %s:%d: %s", *listen, exc.strerror)
            return
        self.metrics.start()

    def _metrics_snapshot(self) -> st.StatsSnapshot:
        max_series = self.running.config.metrics.max_peer_series
        return self.runtime.stats.snapshot(peer_limit=max_series)

    def readiness(self) -> tuple[bool, str]:
        name = self.runtime.tun.device_name()
        if name is None:
            return False, f"TUN device {self.name} was deleted"
        if interface_up(name) is False:
            return False, f"TUN device {name} is down"
        problems = self.health.problems()
        if problems:
            return False, "; ".join(f"{role} {why}" for role, why in problems)
        return True, "ok"

    # ---- shutdown -----------------------------------------------------------------------

    def stop_children(self) -> None:
        stop_all(self.children.values())

    def teardown(self) -> None:
        if self.metrics is not None:
            self.metrics.close()
        self.runtime.close()


def _catch_signals(signals: list[int]) -> tuple[socket.socket, socket.socket, int]:
    """Record SIGTERM/SIGINT/SIGHUP/SIGUSR2 in `signals` and wake a socket for each one.

    Returns (read end, write end, previous wakeup fd) for the main loop's epoll.
    """
    wake_r, wake_w = socket.socketpair()
    wake_r.setblocking(False)
    wake_w.setblocking(False)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR2):
        signal.signal(sig, lambda s, _f: signals.append(s))
    return wake_r, wake_w, signal.set_wakeup_fd(wake_w.fileno())


def _load(options: Options) -> Running:
    """The config as the supervisor keeps it: `Running.config` is its only reference, which
    the workers and the UDP process drop after fork (targets.py), so no caller holds one."""
    config = load_config(options.config_path, create_private_key=True)
    return Running(config, config.interface.mtu)


def run_gateway(options: Options) -> int:
    try:
        running = _load(options)
    except ConfigError as exc:
        log.error("%s", exc)
        return 1
    # Take over the stop signals before the device and the rings exist: a SIGTERM during
    # setup would otherwise kill us by default, leaving the TUN device behind.
    signals: list[int] = []
    wake_r, wake_w, old_wakeup = _catch_signals(signals)
    notifier = Notifier()
    inherited = Inherited.from_environment(forget=FdStore(notifier).forget)
    # An upgrade in place: the old code's children still forward; end them now, so that
    # only ours use the device, the socket and the sessions (and its `wg` socket is free).
    inherited.end_old_children()
    old_control = inherited.take_fd(CONTROL)  # kept open until then: no EOF spin
    if old_control is not None:
        os.close(old_control)
    try:
        try:
            runtime = Runtime.open(running.config, options.workers, inherited)
        except SupervisorError as exc:
            log.error("%s", exc)
            return 1
        finally:
            inherited.close_rest()
        return Supervisor(options, running, runtime, notifier).run(wake_r, signals)
    finally:
        signal.set_wakeup_fd(old_wakeup)
        wake_r.close()
        wake_w.close()
