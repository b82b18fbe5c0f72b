"""Upgrade in place (issue 22): SIGUSR2 makes the supervisor exec the installed `firezone-gw`
with the TUN device, the UDP socket and the run-state (sessions) handed over.

A wireguard-go client is the only one talking (a ping every 50 ms), or pushes an iperf3 TCP
stream, through the real gateway: the main pid stays, the children are new, the client does
not handshake again, and the traffic pauses at most `MAX_GAP`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from testbed.iperf import iperf_argv
from testbed.netns import wait_for
from tests.gateway_lab import MAX_GAP, ROLES, Lab, open_lab, ping_during

pytestmark = pytest.mark.netns

UPGRADED = "kept TUN device"  # the new code's log line once it took the device back


@pytest.fixture
def lab() -> Iterator[Lab]:
    yield from open_lab()


def upgrade(lab: Lab) -> tuple[int, dict[str, int]]:
    """SIGUSR2, then wait for a whole new set of children; (main pid, old children)."""
    assert lab.backend.proc is not None
    main = lab.backend.proc.pid
    old = {role: lab.backend.child_pid(role) for role in ROLES}
    os.kill(main, signal.SIGUSR2)

    def all_new() -> bool:
        try:  # the new code makes the stats segment (the pids' source) again
            pids = {role: lab.backend.child_pid(role) for role in ROLES}
        except FileNotFoundError:
            return False
        return all(pids[r] not in (0, old[r]) for r in ROLES)

    wait_for(all_new, timeout=30)
    return main, old


def assert_upgraded(lab: Lab, main: int, old: dict[str, int]) -> None:
    assert lab.backend.proc is not None
    assert lab.backend.proc.pid == main and lab.backend.proc.poll() is None
    wait_for(lambda: "restored 1 sessions" in lab.backend.log_text(), timeout=10)
    log = lab.backend.log_text()
    assert UPGRADED in log and "kept UDP socket" in log, log[-3000:]
    for pid in old.values():  # the old code's children are gone, not orphaned
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"


def test_sigusr2_keeps_a_client_only_session(lab: Lab) -> None:
    client = lab.clients[0]
    gateway_key = lab.backend.public_key
    handshake = client.peers()[gateway_key].latest_handshake
    assert handshake > 0
    done: list[tuple[int, dict[str, int]]] = []
    gap, replies = ping_during(lab, lambda: done.append(upgrade(lab)), after=5)
    main, old = done[0]
    print(f"SIGUSR2, ping: longest gap between replies {gap:.2f} s ({replies} replies)")
    assert_upgraded(lab, main, old)
    assert client.peers()[gateway_key].latest_handshake == handshake  # no new handshake
    assert gap <= MAX_GAP
    assert lab.backend.readyz() == (200, "ready\n")


def test_sigusr2_keeps_a_tcp_stream_going(lab: Lab) -> None:
    client = lab.clients[0]
    gateway_key = lab.backend.public_key
    handshake = client.peers()[gateway_key].latest_handshake
    lab.start_iperf_servers()
    lab.wait_iperf_idle()
    iperf = subprocess.Popen(
        iperf_argv(lab, 0, ["--interval", "0.1"], 12),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        time.sleep(4)
        main, old = upgrade(lab)
        out, _ = iperf.communicate(timeout=60)
    finally:
        if iperf.poll() is None:
            iperf.kill()
            iperf.wait()
    report = json.loads(out)
    assert "error" not in report, report.get("error")  # the stream lived to its end
    intervals = [i["sum"] for i in report["intervals"]]
    gap = stalled = 0.0
    for interval in intervals:
        stalled = stalled + interval["seconds"] if interval["bytes"] == 0 else 0.0
        gap = max(gap, stalled)
    moved_after = sum(i["bytes"] for i in intervals[-30:])  # the last 3 s
    print(f"SIGUSR2, TCP: longest stall {gap:.1f} s, last 3 s {moved_after} bytes")
    assert_upgraded(lab, main, old)
    assert client.peers()[gateway_key].latest_handshake == handshake
    assert moved_after > 0
    assert gap <= MAX_GAP


def test_a_new_version_that_fails_its_check_leaves_the_old_one_running(
    lab: Lab, tmp_path: Path
) -> None:
    """The config now fails the new code's check: SIGUSR2 is refused, nothing restarts."""
    assert lab.backend.proc is not None
    old = {role: lab.backend.child_pid(role) for role in ROLES}
    config = lab.backend.config_path
    good = config.read_text()
    config.write_text(good + "\nno_such_key = 1\n")
    try:
        os.kill(lab.backend.proc.pid, signal.SIGUSR2)
        wait_for(lambda: "upgrade refused" in lab.backend.log_text(), timeout=30)
    finally:
        config.write_text(good)
    assert "no_such_key" in lab.backend.log_text()
    assert {role: lab.backend.child_pid(role) for role in ROLES} == old
    lab.wait_ping(0, timeout=5)


def test_a_reload_during_the_exec_does_not_end_the_gateway(lab: Lab) -> None:
    """SIGHUP's default action is to terminate: between the exec and the new code's
    handlers it is ignored, so `systemctl reload` during an upgrade costs nothing."""
    assert lab.backend.proc is not None
    os.kill(lab.backend.proc.pid, signal.SIGUSR2)
    wait_for(lambda: "upgrading in place: exec" in lab.backend.log_text(), timeout=30)
    os.kill(lab.backend.proc.pid, signal.SIGHUP)
    os.kill(lab.backend.proc.pid, signal.SIGUSR2)
    wait_for(lambda: "restored 1 sessions" in lab.backend.log_text(), timeout=30)
    assert lab.backend.proc.poll() is None, lab.backend.log_text()[-2000:]
    lab.wait_ping(0, timeout=5)
