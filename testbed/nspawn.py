"""A Debian 12 with systemd as PID 1, booted in systemd-nspawn, to test the package and the
unit as an operator's server runs them.

The root file system is made once with debootstrap (minbase plus systemd, python3, iproute2,
wireguard-tools) from apt's own mirror and cached; every boot uses `--volatile=overlay`, so
what a test changes (and /run) is thrown away with the container. The host has no systemd
as PID 1: `--register=no --keep-unit`, with the container's cgroups under one of its own in
each hierarchy (nspawn creates `payload` and `supervisor` where it runs), removed on close.
Commands run inside through `nsenter` into every namespace of the container's PID 1.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import psutil

ROOTFS_PACKAGES = "systemd,systemd-sysv,dbus,python3,iproute2,wireguard-tools,procps"
SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
CGROUP_HIERARCHIES = ("/sys/fs/cgroup/unified", "/sys/fs/cgroup/systemd", "/sys/fs/cgroup")
BOOT_TIMEOUT = 90.0
# Outside the checkout, so a fresh clone on the same machine reuses the tree (debootstrap costs
# ~2.5 min of a `make test`); named by suite and packages, so a changed list makes a new one.
ROOTFS_CACHE = (
    Path(os.environ.get("FIREZONE_GW_ROOTFS_CACHE", "/var/cache/firezone-gw-tests"))
    / f"{SUITE}-{hashlib.sha256(ROOTFS_PACKAGES.encode()).hexdigest()[:12]}"
)


def apt_mirror(sources: Sequence[Path] | None = None) -> str:
    """The Debian mirror apt uses here (the first `deb` entry that is not a security one)."""
    if sources is None:
        sources = [
            Path("/etc/apt/sources.list"),
            *sorted(Path("/etc/apt/sources.list.d").glob("*")),
        ]
    for path in sources:
        with contextlib.suppress(OSError):
            text = path.read_text()
            found = re.findall(r"^URIs:\s*(\S+)", text, re.MULTILINE)
            found += re.findall(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)", text, re.MULTILINE)
            for uri in found:
                if "security" not in uri:
                    return str(uri)
    return DEFAULT_MIRROR


def ensure_rootfs(cache: Path) -> Path:
    """The cached root file system, made by debootstrap (~90 s) the first time. A lock keeps
    two runs from making it at once; a half-made tree is never used."""
    cache.mkdir(parents=True, exist_ok=True)
    rootfs = cache / "rootfs"
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (rootfs / "usr/bin/systemctl").exists():
            return rootfs
        partial = cache / "rootfs.partial"
        subprocess.run(["rm", "-rf", str(partial)], check=True)
        subprocess.run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={ROOTFS_PACKAGES}",
                SUITE,
                str(partial),
                apt_mirror(),
            ],
            check=True,
            capture_output=True,
            timeout=900,
        )
        partial.rename(rootfs)
    return rootfs


class Container:
    """One booted container; `run` executes a command inside, `close` powers it off."""

    def __init__(self, rootfs: Path, binds: Mapping[Path, str] | None = None) -> None:
        self.name = f"fzchk-{secrets.token_hex(4)}"
        self._cgroups = [Path(h) / self.name for h in CGROUP_HIERARCHIES if _is_cgroup(h)][:2]
        for cgroup in self._cgroups:
            cgroup.mkdir()
        argv = [
            "systemd-nspawn",
            "-q",
            "-b",
            "-D",
            str(rootfs),
            "--volatile=overlay",
            "--private-network",
            "--register=no",
            "--keep-unit",
            f"--machine={self.name}",
            *(f"--bind-ro={host}:{inside}" for host, inside in (binds or {}).items()),
        ]
        self.console = open(f"/tmp/{self.name}.console", "w+b")  # noqa: S108, SIM115 - read on failure
        self._nspawn = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self.console,
            stderr=subprocess.STDOUT,
            env={**os.environ, "SYSTEMD_NSPAWN_UNIFIED_HIERARCHY": "1"},
            preexec_fn=self._enter_cgroups,  # noqa: PLW1509 - no threads run this early in tests
        )
        self.leader = 0
        try:
            self.leader = self._wait_for_leader()
            self._wait_booted()
        except BaseException:
            self.close()
            raise

    def _enter_cgroups(self) -> None:
        for cgroup in self._cgroups:
            (cgroup / "cgroup.procs").write_text("0")

    def _wait_for_leader(self) -> int:
        """The container's PID 1 as the host sees it (NSpid ends in 1)."""
        deadline = time.monotonic() + BOOT_TIMEOUT
        while time.monotonic() < deadline:
            if self._nspawn.poll() is not None:
                raise RuntimeError(f"systemd-nspawn exited: {self.console_text()}")
            with contextlib.suppress(psutil.Error):
                for child in psutil.Process(self._nspawn.pid).children(recursive=True):
                    if _nspid(child.pid)[-1:] == ["1"]:
                        return int(child.pid)
            time.sleep(0.1)
        raise TimeoutError(f"no container init after {BOOT_TIMEOUT} s: {self.console_text()}")

    def _wait_booted(self) -> None:
        deadline = time.monotonic() + BOOT_TIMEOUT
        while time.monotonic() < deadline:
            state = self.run("systemctl", "is-system-running", check=False).stdout.strip()
            if state in ("running", "degraded"):
                return
            time.sleep(0.2)
        raise TimeoutError(f"container not booted after {BOOT_TIMEOUT} s: {self.console_text()}")

    def run(
        self, *cmd: str, check: bool = True, timeout: float = 120, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            ["nsenter", "-t", str(self.leader), "-a", *cmd],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"{' '.join(cmd)}: exit {proc.returncode}\n{proc.stdout}{proc.stderr}"
            )
        return proc

    def sh(self, script: str, check: bool = True, timeout: float = 120) -> str:
        return self.run("sh", "-ec", script, check=check, timeout=timeout).stdout

    def console_text(self) -> str:
        self.console.flush()
        self.console.seek(0)
        return self.console.read().decode(errors="replace")[-4000:]

    def close(self) -> None:
        """Power off (SIGTERM asks nspawn for a clean shutdown), then SIGKILL what is left;
        remove the cgroups."""
        if self._nspawn.poll() is None:
            self._nspawn.send_signal(signal.SIGTERM)
            try:
                self._nspawn.wait(30)
            except subprocess.TimeoutExpired:
                self._nspawn.kill()
                self._nspawn.wait(10)
        for cgroup in self._cgroups:
            _kill_and_remove(cgroup)
        self.console.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.console.name)

    def __enter__(self) -> Container:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def _is_cgroup(path: str) -> bool:
    return Path(path, "cgroup.procs").exists()


def _nspid(pid: int) -> list[str]:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("NSpid:"):
                return line.split()[1:]
    return []


def _cgroup_tree(cgroup: Path) -> Iterator[Path]:
    """Every cgroup below `cgroup` and itself, deepest first."""
    for sub in sorted((p for p in cgroup.iterdir() if p.is_dir()), reverse=True):
        yield from _cgroup_tree(sub)
    yield cgroup


def _kill_and_remove(cgroup: Path) -> None:
    if not cgroup.exists():
        return
    for _ in range(50):
        pids = [
            int(pid)
            for group in _cgroup_tree(cgroup)
            for pid in (group / "cgroup.procs").read_text().split()
        ]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if not pids:
            break
        time.sleep(0.1)
    for group in _cgroup_tree(cgroup):
        with contextlib.suppress(OSError):
            group.rmdir()
