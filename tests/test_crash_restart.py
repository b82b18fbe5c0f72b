"""A supervisor crash with the fd store (issue 22), outside systemd: this test plays systemd.

It holds the notify socket and keeps what the gateway stores there (`FDSTORE=1`, by
`FDNAME=`), as systemd's manager does; after `kill -9` of the main PID and the unit's
`RestartSec=` it starts the gateway again with them laid out as sd_listen_fds(3) says
(fds from 3 in store order, $LISTEN_FDS, $LISTEN_FDNAMES, $LISTEN_PID). A wireguard-go
client is the only one talking (a ping every 50 ms): same device, socket and session (no
new handshake), and the longest gap is the time from exec to forwarding again, measured
quickly and repeatably (tests/test_systemd_handover.py does the same under a real systemd,
slowly). The timeline of the restart is printed from the gateway's log.
"""

from __future__ import annotations

import array
import contextlib
import datetime
import fcntl
import os
import re
import shlex
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed.netns import wait_for
from tests.gateway_lab import Lab, open_lab, ping_during

pytestmark = pytest.mark.netns

RESTART_SEC = 0.1  # the unit's RestartSec=
# A new process loads the gateway's code before it forwards: 0.7-1.1 s longest gap on a
# quiet 2-core VM (docs/BENCHMARKS.md), not yet the <= 1 s (MAX_GAP) of a child's restart.
MAX_RESTART_GAP = 3.0
HIGH_FD = 200  # stored fds are passed up here, then moved to 3.. (no clash on the way)
_STAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+)Z? ", re.MULTILINE)
TIMELINE = (  # (what, the first log line of the new process that shows it)
    ("config parsed, fds taken back", "kept TUN device"),
    ("children forked, crypto restored sessions", "restored "),
    ("READY=1", "the data plane forwards"),
)


class FdStoreManager:
    """systemd's side of the notify socket: READY=1 and the fd store (FDSTORE=1 with
    FDNAME=, FDSTOREREMOVE=1), read in a thread."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.settimeout(0.2)
        self.stored: dict[str, int] = {}  # in store order, as $LISTEN_FDS lays them out
        self.readies = 0
        self._lock = threading.Lock()
        self._closing = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._closing:
            fds = array.array("i")
            try:
                data, ancdata, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(16 * fds.itemsize))
            except TimeoutError:
                continue
            except OSError:
                return
            for level, kind, payload in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
            self._message(dict(_fields(data.decode())), list(fds))

    def _message(self, fields: dict[str, str], fds: list[int]) -> None:
        with self._lock:
            name = fields.get("FDNAME", "stored")
            if fields.get("FDSTOREREMOVE") == "1":
                old = self.stored.pop(name, None)
                if old is not None:
                    os.close(old)
            if fields.get("FDSTORE") == "1" and fds:
                if name in self.stored:  # systemd keeps the first of a name: a duplicate
                    fds.append(fds.pop(0))
                else:
                    self.stored[name] = fds.pop(0)
            if fields.get("READY") == "1":
                self.readies += 1
            for fd in fds:
                os.close(fd)

    def listen_fds(self) -> tuple[list[int], str]:
        """The stored fds moved up to HIGH_FD.. (for pass_fds) and $LISTEN_FDNAMES."""
        with self._lock:
            names = list(self.stored)
            high = [fcntl.fcntl(self.stored[n], fcntl.F_DUPFD_CLOEXEC, HIGH_FD) for n in names]
        return high, ":".join(names)

    def close(self) -> None:
        self._closing = True
        self._thread.join(timeout=5)
        self.sock.close()
        for fd in self.stored.values():
            os.close(fd)
        self.stored.clear()


def _fields(text: str) -> Iterator[tuple[str, str]]:
    for line in text.splitlines():
        key, _, value = line.partition("=")
        yield key, value


@pytest.fixture
def store() -> Iterator[FdStoreManager]:
    with tempfile.TemporaryDirectory(prefix="fzcr-notify-") as tmp:
        manager = FdStoreManager(str(Path(tmp) / "notify.sock"))
        try:
            yield manager
        finally:
            manager.close()


@pytest.fixture
def lab(store: FdStoreManager) -> Iterator[Lab]:
    yield from open_lab(env={"NOTIFY_SOCKET": store.path})


def restart_as_systemd(lab: Lab, store: FdStoreManager) -> dict[str, float]:
    """kill -9 of the main PID, its children gone, RestartSec=, then the gateway again with
    the stored fds. Wall-clock times of those steps."""
    backend = lab.backend
    assert backend.proc is not None and backend.ns is not None
    family = backend.pids()
    times = {"kill -9": time.time()}
    backend.signal(signal.SIGKILL)
    backend.proc.wait(timeout=10)
    wait_for(lambda: not any(_alive(pid) for pid in family), timeout=10)  # PR_SET_PDEATHSIG
    time.sleep(RESTART_SEC)
    high, names = store.listen_fds()
    moves = " ".join(f"{3 + i}<&{fd} {fd}<&-" for i, fd in enumerate(high))
    script = (
        f"exec {moves}; export LISTEN_PID=$$ LISTEN_FDS={len(high)} "
        f'LISTEN_FDNAMES={shlex.quote(names)}; exec "$@"'
    )
    times["exec"] = time.time()
    try:
        with backend.log_path.open("ab") as log:
            backend.proc = backend.ns.popen(
                "bash",
                "-c",
                script,
                "firezone-gw",
                *backend.command(),
                stdout=log,
                stderr=log,
                pass_fds=high,
                env={**os.environ, "NOTIFY_SOCKET": store.path},
            )
    finally:
        for fd in high:
            os.close(fd)
    return times


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def timeline(log: str, since: float) -> dict[str, float]:
    """Seconds after `since` (wall clock) of the first log line of each TIMELINE step."""
    found: dict[str, float] = {}
    for what, text in TIMELINE:
        for line in log.splitlines():
            stamp = _STAMP.match(line)
            if stamp is None or text not in line:
                continue
            at = datetime.datetime.fromisoformat(stamp.group(1)).replace(tzinfo=datetime.UTC)
            if at.timestamp() >= since:
                found[what] = at.timestamp() - since
                break
    return found


def test_kill_9_of_the_supervisor_keeps_a_client_only_session(
    lab: Lab, store: FdStoreManager
) -> None:
    wait_for(lambda: store.readies >= 1 and "sessions" in store.stored, timeout=10)
    client = lab.clients[0]
    gateway_key = lab.backend.public_key
    handshake = client.peers()[gateway_key].latest_handshake
    assert handshake > 0
    times: dict[str, float] = {}
    gap, replies = ping_during(lab, lambda: times.update(restart_as_systemd(lab, store)), after=6)
    wait_for(lambda: store.readies >= 2, timeout=20)
    log = lab.backend.log_text()
    steps = {"exec": times["exec"] - times["kill -9"]}
    steps.update({what: at + steps["exec"] for what, at in timeline(log, times["exec"]).items()})
    shown = ", ".join(f"{what} +{at:.2f} s" for what, at in steps.items())
    print(f"kill -9 of the supervisor: longest gap {gap:.2f} s ({replies} replies); {shown}")
    assert "kept UDP socket" in log and "restored 1 sessions" in log, log[-3000:]
    assert client.peers()[gateway_key].latest_handshake == handshake  # no new handshake
    assert gap <= MAX_RESTART_GAP
    with contextlib.suppress(OSError):
        assert lab.backend.readyz() == (200, "ready\n")
