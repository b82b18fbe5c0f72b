"""The fds that outlive the supervisor (gateway/dataplane/handover.py): kept in systemd's fd
store through a fake notify socket, taken back by a re-run from $LISTEN_FDS as systemd lays
them out, handed over across exec; each one checked, a wrong one refused."""

from __future__ import annotations

import array
import json
import os
import select
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gateway.dataplane.handover import (
    ENV_CHILDREN,
    ENV_FDS,
    FdStore,
    Inherited,
    exec_handover,
)
from gateway.dataplane.runstate import MEMFD_NAMES, STATE
from gateway.dataplane.upgrade import UpgradeCheck
from gateway.telemetry.sdnotify import Notifier
from testbed.netns import Hosts, unique_name
from tunio.linux import open_multiqueue

# What a re-run started by systemd does with its fd store (sd_listen_fds(3) layout: fds from
# 3 in store order, $LISTEN_FDNAMES, $LISTEN_PID its own pid), then what it takes back.
RERUN = textwrap.dedent(
    """
    import json, logging, os, sys
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    fds, names = json.loads(sys.argv[1]), sys.argv[2]
    moved = [os.dup(fd) for fd in fds]  # out of the way, then 3, 4, ... as systemd does
    for i, fd in enumerate(moved):
        os.dup2(fd, 3 + i)
    os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS=str(len(fds)), LISTEN_FDNAMES=names)
    from gateway.dataplane.handover import Inherited
    forgotten = []
    inherited = Inherited.from_environment(forget=forgotten.extend)
    udp = inherited.take_udp()
    state = inherited.take_memfd("state", "firezone-gw-state")
    sessions = inherited.take_memfd("sessions", "firezone-gw-sessions")
    print(json.dumps({
        "udp_port": None if udp is None else udp.getsockname()[1],
        "state": None if state is None else os.pread(state, 100, 0).decode(),
        "sessions": sessions,
        "forgotten": forgotten,
        "left_in_env": [k for k in os.environ if k.startswith("LISTEN_")],
    }))
    """
)


def receive(sock: socket.socket) -> tuple[str, list[int]]:
    """One notify message and the fds it carried, as systemd's manager reads it."""
    fds = array.array("i")
    data, ancdata, _, _ = sock.recvmsg(4096, socket.CMSG_SPACE(16 * fds.itemsize))
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
    return data.decode(), list(fds)


def same_file(a: int, b: int) -> bool:
    sa, sb = os.fstat(a), os.fstat(b)
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def test_the_fd_store_gets_each_fd_under_its_name_and_forgets_it(
    notify_path: tuple[str, socket.socket],
) -> None:
    path, fake_systemd = notify_path
    store = FdStore(Notifier(path))
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    memfd = os.memfd_create(MEMFD_NAMES[STATE], os.MFD_CLOEXEC)
    try:
        store.keep({"udp": udp.fileno(), "state": memfd})
        got = [receive(fake_systemd) for _ in range(2)]
        store.replace({"udp": udp.fileno()})  # a new socket after a listen-port change
        replaced = [receive(fake_systemd) for _ in range(2)]
        store.forget(["udp"])
        removed = receive(fake_systemd)
    finally:
        udp.close()
        os.close(memfd)
    assert [text for text, _ in got] == [
        "FDSTORE=1\nFDNAME=udp\nFDPOLL=0",
        "FDSTORE=1\nFDNAME=state\nFDPOLL=0",
    ]
    assert [len(fds) for _, fds in got] == [1, 1]
    stored_udp, stored_state = got[0][1][0], got[1][1][0]
    try:
        assert stat_kind(stored_udp) == "socket"
        assert os.readlink(f"/proc/self/fd/{stored_state}") == "/memfd:firezone-gw-state (deleted)"
    finally:
        os.close(stored_udp)
        os.close(stored_state)
    assert [text for text, _ in replaced] == [
        "FDSTOREREMOVE=1\nFDNAME=udp",  # what was stored under the name goes first
        "FDSTORE=1\nFDNAME=udp\nFDPOLL=0",
    ]
    for fd in replaced[1][1]:
        os.close(fd)
    assert removed == ("FDSTOREREMOVE=1\nFDNAME=udp", [])


def stat_kind(fd: int) -> str:
    return "socket" if os.readlink(f"/proc/self/fd/{fd}").startswith("socket:") else "other"


def test_outside_systemd_nothing_is_stored_and_nothing_taken(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    store = FdStore(Notifier())
    store.keep({"udp": 0})  # a no-op: no socket to send to
    environ: dict[str, str] = {}
    inherited = Inherited.from_environment(environ)
    assert not inherited
    assert inherited.take_udp() is None
    assert inherited.take_tun_queues("fzgw0", 2, vnet_hdr=True) is None


def test_a_rerun_takes_back_what_systemd_stored_and_refuses_a_wrong_fd(
    notify_path: tuple[str, socket.socket],
) -> None:
    path, fake_systemd = notify_path
    udp = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    udp.bind(("::1", 0))
    state = os.memfd_create(MEMFD_NAMES[STATE], os.MFD_CLOEXEC)
    os.pwrite(state, b"peers and keys", 0)
    wrong_r, wrong_w = os.pipe()  # stored under a run-state name: must be refused
    store = FdStore(Notifier(path))
    try:
        store.keep({"udp": udp.fileno(), "state": state, "sessions": wrong_r})
        stored = [receive(fake_systemd) for _ in range(3)]
        fds = [fd for _, got in stored for fd in got]
        names = ":".join(text.split("FDNAME=")[1].split("\n")[0] for text, _ in stored)
        proc = subprocess.run(
            [sys.executable, "-c", RERUN, json.dumps(fds), names],
            pass_fds=fds,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        for fd in fds:
            os.close(fd)
    finally:
        port = udp.getsockname()[1]
        udp.close()
        for fd in (state, wrong_r, wrong_w):
            os.close(fd)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["udp_port"] == port  # the same socket
    assert result["state"].startswith("peers and keys")
    assert result["sessions"] is None
    assert result["forgotten"] == ["sessions"]  # removed from the fd store: starts fresh
    assert result["left_in_env"] == []  # no child sees $LISTEN_FDS
    assert "refused sessions: not the memfd firezone-gw-sessions" in proc.stderr


def test_listen_fds_for_another_process_are_ignored() -> None:
    environ = {"LISTEN_PID": str(os.getpid() + 1), "LISTEN_FDS": "2", "LISTEN_FDNAMES": "a:b"}
    inherited = Inherited.from_environment(environ)
    assert not inherited
    assert environ == {}


@pytest.mark.netns
def test_tun_queues_are_taken_only_from_the_configured_device_with_its_flags(
    netns_hosts: Hosts,
) -> None:
    ns = netns_hosts.add("fzho")
    name = unique_name("fzhotun")
    queues = open_multiqueue(name, 2, netns=ns.name, vnet_hdr=True)
    try:

        def inherited(forgotten: list[str]) -> Inherited:
            fds = {f"tun{q.index}": os.dup(q.fileno()) for q in queues}
            return Inherited(fds, forget=forgotten.extend)

        refused: list[str] = []
        assert inherited(refused).take_tun_queues("fzgw-other", 2, vnet_hdr=True) is None
        assert inherited(refused).take_tun_queues(name, 2, vnet_hdr=False) is None
        assert inherited(refused).take_tun_queues(name, 3, vnet_hdr=True) is None  # no tun2
        assert refused == ["tun0", "tun1"] * 3
        wrong = Inherited({"tun0": os.open("/dev/null", os.O_RDONLY)}, forget=refused.extend)
        assert wrong.take_tun_queues(name, 1, vnet_hdr=True) is None

        taken = inherited([]).take_tun_queues(name, 2, vnet_hdr=True)
        assert taken is not None
        assert [(q.name, q.index, q.vnet_hdr) for q in taken] == [(name, 0, True), (name, 1, True)]
        assert all(same_file(t.fileno(), q.fileno()) for t, q in zip(taken, queues, strict=True))
        for queue in taken:
            queue.close()
    finally:
        for queue in queues:
            queue.close()


def test_fds_not_taken_are_closed_and_forgotten() -> None:
    r, w = os.pipe()
    forgotten: list[str] = []
    inherited = Inherited({"from-a-newer-version": r}, forget=forgotten.extend)
    inherited.close_rest()
    assert forgotten == ["from-a-newer-version"]
    with pytest.raises(OSError):
        os.fstat(r)
    os.close(w)


# What the new image runs after exec_handover: it reads what it was handed.
READER = textwrap.dedent(
    """
    import json, os
    from gateway.dataplane.handover import Inherited
    inherited = Inherited.from_environment()
    udp = inherited.take_udp()
    print(json.dumps({
        "pid": os.getpid(),
        "udp_port": udp.getsockname()[1],
        "children": inherited.children,
        "env": [k for k in os.environ if k.startswith("FIREZONE_GW_HANDOVER")],
    }))
    """
)
# The old image: binds a socket, then execs READER with it handed over.
EXECER = textwrap.dedent(
    """
    import os, socket, sys
    from gateway.dataplane.handover import exec_handover
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    print(os.getpid(), udp.getsockname()[1], flush=True)
    error = exec_handover([sys.executable, "-c", sys.argv[1]], {"udp": udp.fileno()}, [4242])
    print("exec failed", error)
    """
)


def test_exec_hands_the_fds_over_by_name_with_the_same_pid() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", EXECER, READER],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    before, after = proc.stdout.splitlines()
    pid, port = map(int, before.split())
    result = json.loads(after)
    assert result == {"pid": pid, "udp_port": port, "children": [4242], "env": []}


def test_a_failed_exec_leaves_the_fds_private_again() -> None:
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        error = exec_handover(["/nonexistent/firezone-gw"], {"udp": udp.fileno()}, [])
        assert isinstance(error, FileNotFoundError)
        assert not os.get_inheritable(udp.fileno())
        assert ENV_FDS not in os.environ and ENV_CHILDREN not in os.environ
    finally:
        udp.close()


def test_the_old_images_children_are_killed_and_reaped_others_left_alone() -> None:
    child = subprocess.Popen(["sleep", "60"])
    inherited = Inherited({}, children=[child.pid, os.getppid()])
    inherited.end_old_children()
    assert inherited.children == []
    with pytest.raises(ChildProcessError):  # reaped, not a zombie
        os.waitpid(child.pid, os.WNOHANG)
    child.returncode = -signal.SIGKILL  # Popen must not wait for it again
    assert os.getppid() > 1 and os.kill(os.getppid(), 0) is None  # not ours: untouched


def fake_version(tmp_path: Path, script: str) -> str:
    """An 'installed firezone-gw' that runs `script` whatever its arguments."""
    path = tmp_path / "firezone-gw"
    path.write_text(f"#!/bin/sh\n{script}\n")
    path.chmod(0o755)
    return str(path)


def wait_exited(check: UpgradeCheck) -> None:
    poller = select.poll()
    poller.register(check.fileno(), select.POLLIN)  # the pidfd, as the supervisor's epoll
    assert poller.poll(30_000)
    assert check.exited()


def test_a_version_that_passes_its_check_is_accepted(tmp_path: Path) -> None:
    check = UpgradeCheck.start(fake_version(tmp_path, 'echo "$@"; exit 0'), tmp_path / "gw.toml")
    wait_exited(check)
    assert check.finish() is None


def test_a_version_that_fails_its_check_says_why(tmp_path: Path) -> None:
    check = UpgradeCheck.start(
        fake_version(tmp_path, 'echo "ImportError: no module named gateway.x" >&2; exit 1'),
        tmp_path / "gw.toml",
    )
    wait_exited(check)
    problem = check.finish()
    assert problem is not None
    assert "exit status 1" in problem and "ImportError: no module named gateway.x" in problem


def test_a_check_past_its_deadline_is_killed_and_refused(tmp_path: Path) -> None:
    check = UpgradeCheck.start(fake_version(tmp_path, "exec sleep 60"), tmp_path / "gw.toml")
    problem = check.finish()  # what the supervisor's loop does at the deadline
    assert problem is not None and "did not finish its check" in problem
    assert check.proc.returncode == -signal.SIGKILL


def test_a_version_that_cannot_run_is_refused(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        UpgradeCheck.start(str(tmp_path / "missing"), tmp_path / "gw.toml")
