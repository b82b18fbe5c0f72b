"""The supervisor's child processes: fork with a readiness pipe, reap, health, stop.

A child is forked from the supervisor's objects (rings, TUN queues, the UDP socket), so a
restart is one more fork of the same `Child`. Each child writes one byte to its readiness pipe
when it enters its loop; until then it counts as starting. Children die with the supervisor
(PR_SET_PDEATHSIG), so a SIGKILLed supervisor leaves no orphan holding the TUN queues.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import os
import select
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import psutil

from tunio.device_state import DeviceGone

log = logging.getLogger(__name__)

READY_BYTE = b"R"
EXIT_DEVICE_GONE = 3  # a worker's exit status when its TUN queue reports the device deleted
STOP_GRACE = 1.5  # seconds between SIGTERM and SIGKILL on shutdown
PR_SET_PDEATHSIG = 1

_ready_w = -1  # in a child: the write end of its readiness pipe until it reported


def report_ready() -> None:
    """In a child: tell the supervisor that setup is done and the loop starts."""
    global _ready_w  # noqa: PLW0603 - one pipe per process, set between fork and the loop
    if _ready_w >= 0:
        os.write(_ready_w, READY_BYTE)
        os.close(_ready_w)
        _ready_w = -1


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass
class Child:
    role: str
    target: Callable[[], None]
    pid: int = 0
    pidfd: int = -1
    started: float = 0.0
    ready: bool = False  # the child reported that it entered its loop
    ready_fd: int = -1  # read end of the child's readiness pipe until it reported

    def spawn(self, init: Callable[[], None]) -> None:
        """Fork and run `init` then `target` in the child, which never returns from here."""
        global _ready_w  # noqa: PLW0603 - see report_ready
        ready_r, ready_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        # Objects alive now never change generation again, so the collector does not touch
        # (and copy) the pages children share with us.
        gc.freeze()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.close(ready_r)
                _ready_w = ready_w
                signal.set_wakeup_fd(-1)
                for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
                    signal.signal(sig, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides
                _die_with_parent()
                init()
                self.target()
                code = 0
            except DeviceGone as exc:
                logging.getLogger(f"gateway.{self.role}").info("TUN device gone: %s", exc)
                code = EXIT_DEVICE_GONE
            except BaseException:  # the child must leave through os._exit, whatever happened
                logging.getLogger(f"gateway.{self.role}").exception("%s failed", self.role)
            finally:
                os._exit(code)
        os.close(ready_w)
        self.ready = False
        self.ready_fd = ready_r
        self.pid = pid
        self.pidfd = os.pidfd_open(pid)
        self.started = time.monotonic()
        log.debug("started %s (pid %d)", self.role, pid)

    def watch(self, epoll: select.epoll) -> None:
        epoll.register(self.pidfd, select.EPOLLIN)
        epoll.register(self.ready_fd, select.EPOLLIN)

    def exited(self) -> bool:
        """Whether the process behind `pidfd` has exited (its pidfd polls readable)."""
        poller = select.poll()
        poller.register(self.pidfd, select.POLLIN)
        return bool(poller.poll(0))

    def reap(self) -> int:
        """Collect the exited child; returns its wait status."""
        _, status = os.waitpid(self.pid, 0)
        os.close(self.pidfd)
        self.pid, self.pidfd = 0, -1
        self.close_ready_fd(None)
        self.ready = False
        return status

    def kill(self, epoll: select.epoll) -> None:
        """SIGKILL and reap a running child on purpose (not counted as a crash)."""
        if not self.pid:
            return
        epoll.unregister(self.pidfd)
        self.close_ready_fd(epoll)
        os.kill(self.pid, signal.SIGKILL)
        self.reap()

    def read_ready(self, epoll: select.epoll) -> None:
        try:
            data = os.read(self.ready_fd, 1)
        except BlockingIOError:
            return
        self.ready = data == READY_BYTE  # b"" = it died before its loop
        self.close_ready_fd(epoll)
        if self.ready:
            log.debug("%s (pid %d) ready", self.role, self.pid)

    def close_ready_fd(self, epoll: select.epoll | None) -> None:
        if self.ready_fd < 0:
            return
        if epoll is not None:
            with contextlib.suppress(OSError):
                epoll.unregister(self.ready_fd)
        os.close(self.ready_fd)
        self.ready_fd = -1


def stop_all(children: Iterable[Child], grace: float = STOP_GRACE) -> None:
    """SIGTERM every running child, SIGKILL those still there after `grace` seconds."""
    running = [c for c in children if c.pid]
    for child in running:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for child in running:
        while time.monotonic() < deadline:
            pid, _ = os.waitpid(child.pid, os.WNOHANG)
            if pid:
                break
            time.sleep(0.01)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(child.pid, 0)
        with contextlib.suppress(OSError):
            os.close(child.pidfd)
        child.pid, child.pidfd = 0, -1
        child.close_ready_fd(None)


class ProcessStates:
    """Why a live child cannot work (stopped, zombie), from psutil, with cached handles."""

    def __init__(self) -> None:
        self._procs: dict[int, psutil.Process] = {}

    def problem(self, pid: int) -> str | None:
        try:
            proc = self._procs.get(pid) or psutil.Process(pid)
            self._procs[pid] = proc
            status = proc.status()
        except psutil.NoSuchProcess:
            self._procs.pop(pid, None)
            return "has exited"
        if status in (psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP):
            return "is stopped"
        if status in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
            return "has exited"
        return None
