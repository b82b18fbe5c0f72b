"""The fds that outlive the supervisor: the TUN queues, the UDP socket, the run-state memfds.

Two ways hand them over to the next supervisor, both read by the same code (`Inherited`):

- systemd's fd store: under systemd the supervisor keeps them there (`FDSTORE=1`, one
  FDNAME= per fd, `FdStore`); after a crash (`kill -9` of the main PID) systemd starts the
  gateway again with them in $LISTEN_FDS/$LISTEN_FDNAMES (fds from 3, for $LISTEN_PID only).
- an upgrade in place (SIGUSR2, `exec_handover`): the supervisor execs the installed
  `firezone-gw` with them left open and named in $FIREZONE_GW_HANDOVER_FDS
  (`name=fd:name=fd`), and the children still running in $FIREZONE_GW_HANDOVER_CHILDREN:
  they are the new image's children (same pid), so it ends them before forking its own.

Nothing is trusted for its name alone: a TUN queue must be a /dev/net/tun fd attached to the
configured device with the same flags, the UDP socket a bound UDP socket, a run-state fd the
memfd of that name. Whatever fails is closed, logged, and removed from the fd store, and
that resource starts fresh. With nothing inherited (outside systemd, or a first start) the
same code opens everything fresh.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import socket
import stat
from collections.abc import Callable, Mapping, MutableMapping, Sequence

from gateway.telemetry.sdnotify import Notifier, check_fd_name
from tunio.device_state import TUNGETIFF
from tunio.linux import IFF_VNET_HDR, QUEUE_FLAGS, TunQueue

log = logging.getLogger(__name__)

LISTEN_FDS_START = 3  # sd_listen_fds(3)
ENV_FDS = "FIREZONE_GW_HANDOVER_FDS"
ENV_CHILDREN = "FIREZONE_GW_HANDOVER_CHILDREN"
_SYSTEMD_VARS = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")
TUN_DEVICE = os.makedev(10, 200)  # /dev/net/tun
UDP = "udp"
CONTROL = "control"  # the old image's end of the crypto control pair, until its children end


def tun_queue_name(index: int) -> str:
    return f"tun{index}"


class Inherited:
    """The named fds a previous supervisor left (see module docstring); taken one by one,
    each checked. `forget(names)` is told of every name refused (the fd store drops it)."""

    def __init__(
        self,
        fds: Mapping[str, int],
        children: Sequence[int] = (),
        forget: Callable[[Sequence[str]], None] = lambda _names: None,
    ) -> None:
        self._fds = dict(fds)
        self.children = list(children)
        self._forget = forget
        for fd in self._fds.values():
            with contextlib.suppress(OSError):
                os.set_inheritable(fd, False)

    @classmethod
    def from_environment(
        cls,
        environ: MutableMapping[str, str] | None = None,
        forget: Callable[[Sequence[str]], None] = lambda _names: None,
    ) -> Inherited:
        """Read (and remove, so no child sees them) systemd's $LISTEN_FDS and the upgrade's
        variables. Malformed values are logged and ignored."""
        env = os.environ if environ is None else environ
        fds: dict[str, int] = {}
        listen = {name: env.pop(name, "") for name in _SYSTEMD_VARS}
        if listen["LISTEN_FDS"]:
            fds.update(_listen_fds(listen))
        exec_fds = env.pop(ENV_FDS, "")
        children = env.pop(ENV_CHILDREN, "")
        for name, fd in _parse_pairs(exec_fds):
            if name in fds:
                log.error("hand-over: fd %s given twice; keeping the first", name)
                _close(fd)
            else:
                fds[name] = fd
        pids = [int(p) for p in children.split(",") if p.isdigit()]
        if fds:
            log.info("taking back from the previous supervisor: %s", ", ".join(sorted(fds)))
        return cls(fds, pids, forget)

    def __bool__(self) -> bool:
        return bool(self._fds) or bool(self.children)

    def names(self) -> list[str]:
        return sorted(self._fds)

    def refuse(self, names: Sequence[str], why: str) -> None:
        """Close and forget `names` (those present): the resource starts fresh."""
        present = [n for n in names if n in self._fds]
        if not present:
            return
        log.error("hand-over: refused %s: %s; starting it fresh", ", ".join(present), why)
        for name in present:
            _close(self._fds.pop(name))
        self._forget(present)

    def take_fd(self, name: str) -> int | None:
        return self._fds.pop(name, None)

    def take_tun_queues(self, device: str, count: int, *, vnet_hdr: bool) -> list[TunQueue] | None:
        """All `count` queues of `device` opened as now (flags), or None (all refused)."""
        names = [tun_queue_name(i) for i in range(count)]
        if not any(name in self._fds for name in names):
            return None
        problems = [
            f"{name}: {why}"
            for name in names
            if (why := _tun_problem(self._fds.get(name), device, vnet_hdr)) is not None
        ]
        if problems:
            self.refuse(names, "; ".join(problems))
            return None
        queues = []
        for index, name in enumerate(names):
            fd = self._fds.pop(name)
            os.set_blocking(fd, False)
            queues.append(TunQueue(fd, device, index, vnet_hdr=vnet_hdr))
        return queues

    def take_udp(self) -> socket.socket | None:
        """The bound UDP socket, or None (refused or not handed over)."""
        fd = self._fds.get(UDP)
        if fd is None:
            return None
        why = _udp_problem(fd)
        if why is not None:
            self.refuse([UDP], why)
            return None
        del self._fds[UDP]
        sock = socket.socket(fileno=fd)
        sock.setblocking(False)
        return sock

    def take_memfd(self, name: str, memfd_name: str, size: int | None = None) -> int | None:
        """The memfd made as `memfd_name` (of `size` bytes if given), or None (refused or
        not handed over)."""
        fd = self._fds.get(name)
        if fd is None:
            return None
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
            st = os.fstat(fd)
        except OSError as exc:
            self.refuse([name], f"unreadable ({exc.strerror})")
            return None
        if not stat.S_ISREG(st.st_mode) or target != f"/memfd:{memfd_name} (deleted)":
            self.refuse([name], f"not the memfd {memfd_name} but {target}")
            return None
        if size is not None and st.st_size != size:
            self.refuse([name], f"{st.st_size} bytes, not {size} (another layout)")
            return None
        return self._fds.pop(name)

    def end_old_children(self) -> None:
        """SIGKILL and reap the previous image's children (an upgrade in place): only then
        may new ones use the TUN queues, the socket and the session table. A pid that is
        not our child is skipped (it cannot be reused while unreaped: it is ours or gone)."""
        for pid in self.children:
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        self.children = []

    def close_rest(self) -> None:
        """Close what nobody took (names of a newer or older version, extra queues)."""
        if self._fds:
            self.refuse(list(self._fds), "not used by this version")


def _listen_fds(listen: Mapping[str, str]) -> dict[str, int]:
    """sd_listen_fds_with_names(3): fds 3.. named by $LISTEN_FDNAMES, for $LISTEN_PID only."""
    if listen["LISTEN_PID"] != str(os.getpid()) or not listen["LISTEN_FDS"].isdigit():
        log.warning("ignoring $LISTEN_FDS: not for this process or malformed")
        return {}
    count = int(listen["LISTEN_FDS"])
    names = listen["LISTEN_FDNAMES"].split(":") if listen["LISTEN_FDNAMES"] else []
    fds: dict[str, int] = {}
    for i in range(count):
        fd = LISTEN_FDS_START + i
        name = names[i] if i < len(names) else ""
        if not name or name in fds or name == "unknown":
            log.error("hand-over: fd %d from systemd has no name of its own (%r): closed", fd, name)
            _close(fd)
        else:
            fds[name] = fd
    return fds


def _parse_pairs(text: str) -> list[tuple[str, int]]:
    pairs = []
    for item in filter(None, text.split(":")):
        name, _, number = item.partition("=")
        if not number.isdigit() or int(number) < LISTEN_FDS_START:
            log.error("hand-over: malformed entry %r in $%s", item[:40], ENV_FDS)
            continue
        pairs.append((name, int(number)))
    return pairs


def _tun_problem(fd: int | None, device: str, vnet_hdr: bool) -> str | None:
    if fd is None:
        return "missing"
    try:
        st = os.fstat(fd)
        if not stat.S_ISCHR(st.st_mode) or st.st_rdev != TUN_DEVICE:
            return "not a /dev/net/tun fd"
        ifr = fcntl.ioctl(fd, TUNGETIFF, bytes(40))
    except OSError as exc:
        return f"not an attached TUN queue ({exc.strerror})"
    name = ifr[:16].split(b"\0", 1)[0].decode(errors="replace")
    flags = int.from_bytes(ifr[16:18], "little")
    want = QUEUE_FLAGS | (IFF_VNET_HDR if vnet_hdr else 0)
    if name != device:
        return f"a queue of {name!r}, not of {device!r}"
    if flags & (QUEUE_FLAGS | IFF_VNET_HDR) != want:
        return f"flags {flags:#x}, not {want:#x}"
    return None


def _udp_problem(fd: int) -> str | None:
    try:
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            return "not a socket"
        probe = socket.socket(fileno=os.dup(fd))
    except OSError as exc:
        return f"unusable ({exc.strerror})"
    with probe:
        protocol = probe.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL)
        if probe.family not in (socket.AF_INET, socket.AF_INET6) or probe.type != socket.SOCK_DGRAM:
            return f"a {probe.family.name} {probe.type.name} socket, not UDP"
        if protocol != socket.IPPROTO_UDP:
            return f"protocol {protocol}, not UDP"
        if probe.getsockname()[1] == 0:
            return "not bound"
    return None


def _close(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


class FdStore:
    """Keeps the supervisor's named fds in systemd's fd store (no-op outside systemd)."""

    def __init__(self, notifier: Notifier) -> None:
        self.notifier = notifier

    def keep(self, fds: Mapping[str, int]) -> None:
        """Store each fd under its name. One it holds already (taken back from it) is not
        stored twice: systemd suppresses a duplicate of a stored fd."""
        for name, fd in fds.items():
            self.notifier.store_fd(name, fd)

    def replace(self, fds: Mapping[str, int]) -> None:
        """Store each fd in place of what was stored under its name (a new UDP socket)."""
        for name, fd in fds.items():
            self.notifier.remove_stored(name)
            self.notifier.store_fd(name, fd)

    def forget(self, names: Sequence[str]) -> None:
        for name in names:
            self.notifier.remove_stored(name)


def exec_handover(argv: Sequence[str], fds: Mapping[str, int], children: Sequence[int]) -> OSError:
    """Exec `argv` (this pid) with `fds` open and named in the environment; returns only if
    the exec failed (the fds are private again, nothing else changed)."""
    for name, fd in fds.items():
        check_fd_name(name)
        os.set_inheritable(fd, True)
    env = dict(os.environ)
    env[ENV_FDS] = ":".join(f"{name}={fd}" for name, fd in fds.items())
    env[ENV_CHILDREN] = ",".join(str(pid) for pid in children)
    try:
        os.execve(argv[0], list(argv), env)  # noqa: S606 - this gateway's own command line
    except OSError as exc:
        for fd in fds.values():
            os.set_inheritable(fd, False)
        return exc
    raise AssertionError("unreachable: execve returned")  # pragma: no cover
