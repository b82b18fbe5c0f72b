"""Test hosts built from network namespaces joined by veth pairs.

Every name is unique to this test run (pid plus a counter), so parallel runs and other
tests never collide, including WireGuard control sockets in /var/run/wireguard, which all
namespaces share. Everything made here is removed by `close()`, even after a failure.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

_counter = itertools.count()
_RUN_TAG = f"{os.getpid() % 0xFFFF:04x}"
IFNAMSIZ = 15


def unique_name(tag: str) -> str:
    """A name unique to this run that fits an interface name (15 bytes)."""
    suffix = f"{_RUN_TAG}{next(_counter):x}"
    name = f"{tag[: IFNAMSIZ - len(suffix)]}{suffix}"
    if len(name) > IFNAMSIZ:
        raise ValueError(f"interface name too long: {name}")
    return name


def run(cmd: Sequence[str], *, check: bool = True, timeout: float = 30) -> str:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(
            f"{shlex.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout}"
        )
    return proc.stdout


class NetNS:
    """One test host: a network namespace with loopback up."""

    def __init__(self, tag: str = "fzt") -> None:
        self.name = unique_name(tag)
        self._procs: list[subprocess.Popen[bytes]] = []
        run(["ip", "netns", "add", self.name])
        self.ip("link", "set", "lo", "up")

    def exec_argv(self, *cmd: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *cmd]

    def run(self, *cmd: str, check: bool = True, timeout: float = 30) -> str:
        return run(self.exec_argv(*cmd), check=check, timeout=timeout)

    def ip(self, *args: str, check: bool = True) -> str:
        return run(["ip", "-n", self.name, *args], check=check)

    def popen(self, *cmd: str, **kwargs: object) -> subprocess.Popen[bytes]:
        """Start a process inside the namespace; it is killed by close()."""
        proc: subprocess.Popen[bytes] = subprocess.Popen(  # type: ignore[call-overload]  # kwargs pass through
            self.exec_argv(*cmd), start_new_session=True, **kwargs
        )
        self._procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in self._procs:
            _stop(proc)
        # Anything else still inside (a daemon that forked away) dies with the namespace.
        pids = run(["ip", "netns", "pids", self.name], check=False).split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        run(["ip", "netns", "del", self.name], check=False)


def _stop(proc: subprocess.Popen[bytes], timeout: float = 3) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout)


def veth(a: NetNS, b: NetNS, addr_a: str, addr_b: str, *, mtu: int = 1500) -> tuple[str, str]:
    """Join two hosts with a veth pair and address both ends (CIDR strings, v4 or v6)."""
    name_a, name_b = unique_name("fzva"), unique_name("fzvb")
    run(["ip", "link", "add", name_a, "netns", a.name, "mtu", str(mtu),
         "type", "veth", "peer", "name", name_b, "netns", b.name, "mtu", str(mtu)])  # fmt: skip
    for ns, name, addr in ((a, name_a, addr_a), (b, name_b, addr_b)):
        extra = ["nodad"] if ":" in addr else []
        ns.ip("addr", "add", addr, "dev", name, *extra)
        ns.ip("link", "set", name, "up")
    return name_a, name_b


def wait_for(predicate: Callable[[], object], timeout: float = 10, interval: float = 0.05) -> None:
    """Poll `predicate()` until true; raise TimeoutError naming it otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError(f"condition not met within {timeout}s: {predicate!r}")


class Hosts:
    """A factory of namespaces that removes all of them on close()."""

    def __init__(self) -> None:
        self._all: list[NetNS] = []

    def add(self, tag: str = "fzt") -> NetNS:
        ns = NetNS(tag)
        self._all.append(ns)
        return ns

    def close(self) -> None:
        for ns in reversed(self._all):
            ns.close()


@contextlib.contextmanager
def hosts() -> Iterator[Hosts]:
    factory = Hosts()
    try:
        yield factory
    finally:
        factory.close()


WIREGUARD_RUN_DIR = Path("/var/run/wireguard")
