"""The supervisor's child processes: fork with a readiness pipe, reap, health, stop.

A child is forked from the supervisor's objects (rings, TUN queues, the UDP socket), so a
restart is one more fork of the same `Child`. Right after the fork the child names itself
(`/proc/self/comm`, e.g. fzgw-tun0, shown by ps, top and the journal) and closes every fd
it does not need: it would otherwise hold the supervisor's run-state memfd (private key),
the other children's TUN queues and an old UDP socket that keeps a port bound. Objects whose
fds it closed stay referenced and unused: the child leaves through os._exit, so no finalizer
ever closes their (possibly reused) numbers. Each child writes one byte to its readiness
pipe when it enters its loop; until then it counts as starting. Children die with the
supervisor (PR_SET_PDEATHSIG), so a SIGKILLed supervisor leaves no orphan holding the TUN
queues.
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
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from gateway.dataplane.backoff import RestartBackoff
from gateway.dataplane.heartbeat import Heartbeat
from tunio.device_state import DeviceGone

if TYPE_CHECKING:
    import psutil

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


def set_process_name(name: str) -> None:
    """Name this process for ps/top (the kernel keeps the first 15 bytes)."""
    with open("/proc/self/comm", "w") as comm:
        comm.write(name)


def _mapped_files() -> set[tuple[int, int]]:
    """(device, inode) of every file mapped into this process."""
    found = set()
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            inode = int(fields[4])
            if inode:
                major, minor = fields[3].split(":")
                found.add((os.makedev(int(major, 16), int(minor, 16)), inode))
    return found


def keep_only_fds(keep: Iterable[int]) -> None:
    """Close every fd but `keep` and the fds of files mapped into this process.

    Python's mmap keeps a dup of the fd it mapped and closes that number when the mapping is
    closed: closing it here could later close an unrelated fd that reused the number, and
    the mapping stays reachable anyway (/proc/<pid>/map_files).
    """
    kept = set(keep)
    mapped = _mapped_files()
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        with contextlib.suppress(OSError):  # the listing's own directory fd is gone by now
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) in mapped:
                kept.add(fd)
    ceiling = max(int(name) for name in os.listdir("/proc/self/fd")) + 1
    low = 0
    for fd in [*sorted(kept), ceiling]:
        # Only non-empty ranges: CPython 3.11 turns closerange(n, n) into close_range(n, ~0).
        if fd > low:
            os.closerange(low, fd)
        low = max(low, fd + 1)


@dataclass(frozen=True)
class ChildFds:
    """The supervisor's fds a child uses: its ring eventfds and its other fds."""

    rings: tuple[int, ...] = ()  # always registered in the child's epoll
    other: tuple[int, ...] = ()  # TUN queue, UDP socket, control sockets, ...


@dataclass
class Child:
    role: str
    target: Callable[[], None]
    process_name: str = ""
    fds: Callable[[], ChildFds] = ChildFds  # evaluated at fork time (the UDP socket changes)
    heartbeat: Heartbeat = field(default_factory=Heartbeat.detached)
    backoff: RestartBackoff = field(default_factory=RestartBackoff)
    pid: int = 0
    pidfd: int = -1
    started: float = 0.0
    ready: bool = False  # the child reported that it entered its loop
    ready_at: float = 0.0
    ready_fd: int = -1  # read end of the child's readiness pipe until it reported
    restart_at: float | None = None  # a restart waits for its backoff delay until then

    def spawn(self, init: Callable[[], None]) -> None:
        """Fork and run `init` then `target` in the child, which never returns from here."""
        global _ready_w  # noqa: PLW0603 - see report_ready
        ready_r, ready_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        fds = self.fds()
        self.heartbeat.reset()
        self.restart_at = None
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
                for sig in (signal.SIGINT, signal.SIGUSR2):  # the supervisor decides
                    signal.signal(sig, signal.SIG_IGN)
                _die_with_parent()
                if self.process_name:
                    set_process_name(self.process_name)
                keep_only_fds((0, 1, 2, ready_w, *fds.rings, *fds.other))
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
        self.ready_at = time.monotonic()
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
        import psutil  # noqa: PLC0415 - not loaded at start: a restart forwards sooner

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
