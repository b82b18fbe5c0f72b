"""Process supervision end to end (issue 11): names, fd hygiene, hung children, backoff;
and (issue 22) a killed crypto process's successor continues the client's session.

Each test runs the real `firezone-gw` between a wireguard-go client and a resource host
(tests/gateway_lab.py) and looks at its processes from outside, through /proc.
"""

from __future__ import annotations

import base64
import os
import re
import signal
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from testbed.addresses import LISTEN_PORT, RESOURCE_ADDR
from testbed.netns import wait_for
from tests.gateway_lab import MAX_GAP, ROLES, Lab, open_lab, ping_during

pytestmark = pytest.mark.netns

NAMES = {"worker0": "fzgw-tun0", "worker1": "fzgw-tun1", "crypto": "fzgw-crypto", "udp": "fzgw-udp"}
RESTART_LIMIT = 5.0  # seconds from SIGSTOP to the replacement process (the bound)
MAX_READ = 64 << 20  # bytes read from any one fd (rings are ~1.5 MiB, the stats segment less)


@pytest.fixture
def lab() -> Iterator[Lab]:
    yield from open_lab()


def children(lab: Lab) -> list[psutil.Process]:
    """The supervisor's children, without multiprocessing's resource tracker, which
    multiprocessing.shared_memory (gateway/telemetry/stats/) starts on its own."""
    assert lab.backend.proc is not None
    return [
        child
        for child in psutil.Process(lab.backend.proc.pid).children()
        if "multiprocessing.resource_tracker" not in " ".join(child.cmdline())
    ]


def fd_targets(pid: int) -> dict[int, str]:
    """The process's open fds and what they are; none once it has exited (a child the
    supervisor just replaced may be gone between listing the family and reading here)."""
    found: dict[int, str] = {}
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except FileNotFoundError:
        return found
    for name in names:
        try:
            found[int(name)] = os.readlink(f"/proc/{pid}/fd/{name}")
        except FileNotFoundError:  # closed meanwhile
            continue
    return found


def readable_contents(pid: int) -> Iterator[tuple[str, bytes]]:
    """(target, contents) of every regular file or memfd the process holds open."""
    for fd, target in fd_targets(pid).items():
        path = f"/proc/{pid}/fd/{fd}"
        try:
            if not stat.S_ISREG(os.stat(path).st_mode):
                continue  # sockets, TUN, eventfds: reading them would take packets
            with open(path, "rb") as file:
                yield target, file.read(MAX_READ)
        except OSError:
            continue


def key_forms(private_key_b64: str) -> list[bytes]:
    raw = base64.b64decode(private_key_b64)
    return [raw, private_key_b64.encode(), raw.hex().encode()]


def udp_ports(pid: int) -> set[int]:
    """Local ports of the UDP sockets the process holds (in its own network namespace)."""
    inodes = {
        int(m.group(1))
        for target in fd_targets(pid).values()
        if (m := re.fullmatch(r"socket:\[(\d+)\]", target))
    }
    ports: set[int] = set()
    for table in ("udp", "udp6"):
        try:
            text = Path(f"/proc/{pid}/net/{table}").read_text()
        except (FileNotFoundError, ProcessLookupError):
            return set()  # the process exited (a replaced child): it holds nothing
        for line in text.splitlines()[1:]:
            fields = line.split()
            if int(fields[9]) in inodes:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def family(lab: Lab) -> list[int]:
    assert lab.backend.proc is not None
    return [lab.backend.proc.pid, *(lab.backend.child_pid(role) for role in ROLES)]


# ---- names and fds ------------------------------------------------------------------------


def test_every_process_is_named_by_its_job(lab: Lab) -> None:
    assert lab.backend.proc is not None
    assert psutil.Process(lab.backend.proc.pid).name() == "firezone-gw"
    by_pid = {child.pid: child.name() for child in children(lab)}
    assert sorted(by_pid.values()) == sorted(NAMES.values())
    for role, name in NAMES.items():
        assert by_pid[lab.backend.child_pid(role)] == name
    # A restarted child gets its name too.
    old = lab.backend.child_pid("worker1")
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: lab.backend.child_pid("worker1") not in (0, old), timeout=5)
    assert psutil.Process(lab.backend.child_pid("worker1")).name() == "fzgw-tun1"


def test_no_key_is_reachable_from_the_fds_of_workers_and_the_udp_process(lab: Lab) -> None:
    # A `wg` change makes the crypto process save the device state, private key included,
    # in the run-state memfd.
    lab.backend.wg(
        "set", lab.backend.ifname, "peer", lab.clients[0].public_key, "persistent-keepalive", "25"
    )
    forms = key_forms(lab.backend.private_key)
    crypto = lab.backend.child_pid("crypto")

    def crypto_saved_state() -> bool:
        return any(
            target.startswith("/memfd:firezone-gw-state") and forms[2] in data
            for target, data in readable_contents(crypto)
        )

    wait_for(crypto_saved_state, timeout=5)  # the test would see a key if one leaked
    for role in ("worker0", "worker1", "udp"):
        pid = lab.backend.child_pid(role)
        targets = fd_targets(pid).values()
        assert not [t for t in targets if t.startswith("/memfd:firezone-gw-state")], role
        for target, data in readable_contents(pid):
            assert not [form for form in forms if form in data], (role, target)
    assert udp_ports(lab.backend.child_pid("worker0")) == set()
    assert udp_ports(lab.backend.child_pid("udp")) == {LISTEN_PORT}


def test_a_changed_listen_port_is_released_everywhere_and_can_be_taken_back(lab: Lab) -> None:
    lab.backend.wg("set", lab.backend.ifname, "listen-port", "51821")
    wait_for(lambda: "listening on UDP port 51821" in lab.backend.log_text(), timeout=5)
    wait_for(lambda: lab.backend.child_pid("udp") != 0, timeout=5)
    holders = [pid for pid in family(lab) if LISTEN_PORT in udp_ports(pid)]
    assert holders == [], f"port {LISTEN_PORT} still held by {holders}"
    lab.backend.wg("set", lab.backend.ifname, "listen-port", str(LISTEN_PORT))
    wait_for(lambda: f"listening on UDP port {LISTEN_PORT}" in lab.backend.log_text(), timeout=5)
    assert "Address already in use" not in lab.backend.log_text()
    assert lab.backend.wg("show", lab.backend.ifname, "listen-port").strip() == str(LISTEN_PORT)
    lab.wait_ping(0, timeout=10)  # the client never moved: same endpoint, same session


# ---- hung children ------------------------------------------------------------------------


def busy_worker(lab: Lab) -> str:
    """The worker that carries the client's ping (the flow hash picks one)."""

    def tun_tx() -> dict[str, int]:
        region = lab.backend.stats()
        try:
            snap = region.snapshot(sample_processes=False)
            return {r: snap.process(r).counters.tun_tx_packets for r in ("worker0", "worker1")}
        finally:
            region.close()

    before = tun_tx()
    assert lab.ping(0, count=10, interval=0.02)
    wait_for(lambda: tun_tx() != before, timeout=5)  # counters reach shared memory in batches
    after = tun_tx()
    return max(after, key=lambda role: after[role] - before[role])


def stop_and_wait_restart(lab: Lab, role: str) -> tuple[int, float]:
    """SIGSTOP the child playing `role`; its pid and the seconds until its replacement
    attached."""
    old = lab.backend.child_pid(role)
    reasons = set()

    def replaced() -> bool:
        reasons.add(lab.backend.readyz()[1].strip())
        return lab.backend.child_pid(role) not in (0, old)

    stopped_at = time.monotonic()
    os.kill(old, signal.SIGSTOP)
    try:
        wait_for(replaced, timeout=RESTART_LIMIT)
    except TimeoutError:
        os.kill(old, signal.SIGKILL)  # not restarted: do not leave it stopped
        raise AssertionError(
            f"{role} not restarted in {RESTART_LIMIT} s:\n{lab.backend.log_text()}"
        ) from None
    took = time.monotonic() - stopped_at
    assert not psutil.pid_exists(old) or psutil.Process(old).status() == psutil.STATUS_ZOMBIE
    # /readyz told while it happened (WATCHDOG=1 follows the same health check).
    assert f"{role} has work waiting but makes no progress" in reasons, reasons
    return old, took


def test_a_stopped_child_under_traffic_is_restarted(lab: Lab) -> None:
    ping = subprocess.Popen(
        lab.clients[0].ns.exec_argv("ping", "-i", "0.05", "-W", "1", "-q", RESOURCE_ADDR),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        worker = busy_worker(lab)
        old, took = stop_and_wait_restart(lab, worker)
        print(f"{worker} restarted {took:.1f} s after SIGSTOP")
        assert (
            f"{worker} (pid {old}) is hung: work waiting and no progress" in lab.backend.log_text()
        )
        lab.wait_ping(0, timeout=5)
        # The UDP process waits on its socket, not on a ring: its heartbeat says so.
        old, took = stop_and_wait_restart(lab, "udp")
        print(f"udp restarted {took:.1f} s after SIGSTOP")
        lab.wait_ping(0, timeout=5)
        old, took = stop_and_wait_restart(lab, "crypto")
        print(f"crypto restarted {took:.1f} s after SIGSTOP")
        assert f"crypto (pid {old}) is hung: work waiting and no progress" in lab.backend.log_text()
        # The successor continues the session (issue 22; see the last test for the gap).
        lab.wait_ping(0, timeout=30)
        assert lab.backend.readyz() == (200, "ready\n")
    finally:
        ping.kill()
        ping.wait(5)


def test_an_idle_stopped_child_is_not_taken_for_hung(lab: Lab) -> None:
    """Nothing waits for the UDP process: stopped, it is reported, not restarted."""
    udp = lab.backend.child_pid("udp")
    os.kill(udp, signal.SIGSTOP)
    try:
        wait_for(lambda: lab.backend.readyz()[0] == 503, timeout=5)
        time.sleep(5)  # longer than the hang timeout plus a tick
        assert lab.backend.child_pid("udp") == udp
        assert "is hung" not in lab.backend.log_text()
    finally:
        os.kill(udp, signal.SIGCONT)
    wait_for(lambda: lab.backend.readyz()[0] == 200, timeout=5)


def voluntary_switches(pid: int) -> int:
    """Times the process's main thread went to sleep (each epoll wait is one)."""
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^voluntary_ctxt_switches:\s+(\d+)$", status, re.MULTILINE)
    assert match is not None
    return int(match.group(1))


def test_an_idle_gateway_supervisor_wakes_once_a_second(lab: Lab) -> None:
    """Watching heartbeats adds no wake-ups while nothing moves (a session is still live,
    so the crypto process wakes for its timers: that is not traffic)."""
    assert lab.backend.proc is not None
    time.sleep(1)  # the fixture's last ping is over
    before = voluntary_switches(lab.backend.proc.pid)
    time.sleep(6)
    woke = voluntary_switches(lab.backend.proc.pid) - before
    assert woke <= 6 + 2, woke  # one tick a second; reading heartbeats twice would be 12


# ---- restart backoff ------------------------------------------------------------------------


def test_repeated_crashes_back_off_instead_of_ending_the_gateway(lab: Lab) -> None:
    """Today's limit (more than 5 crashes in 60 s end the gateway) is gone: restarts wait
    0.1 s, doubling, and the gateway stays up."""
    for _ in range(6):
        old = lab.backend.child_pid("worker0")
        os.kill(old, signal.SIGKILL)
        wait_for(lambda old=old: lab.backend.child_pid("worker0") not in (0, old), timeout=10)
    assert not lab.backend.exited(), lab.backend.log_text()
    died = r"worker0 \(pid \d+\) died: killed by SIGKILL; restarting in ([\d.]+) s"
    delays = [float(d) for d in re.findall(died, lab.backend.log_text())]
    assert delays == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2], lab.backend.log_text()
    wait_for(lambda: lab.backend.readyz()[0] == 200, timeout=5)
    lab.wait_ping(0, timeout=5)


# ---- issue 22: a killed crypto process keeps the sessions ----
# `kill -9` of the crypto process while a wireguard-go client is the only one talking (a
# ping every 50 ms): the successor continues the session from the run-state memfd, so no
# new handshake on the client and at most 1 s between replies (before: the client's own
# timers, keepalive 10 s + rekey timeout 5 s, then a new handshake).


def test_a_killed_crypto_process_keeps_the_clients_session(lab: Lab) -> None:
    client = lab.clients[0]
    gateway_key = lab.backend.public_key
    handshake = client.peers()[gateway_key].latest_handshake
    assert handshake > 0
    old = lab.backend.child_pid("crypto")

    def kill() -> None:
        os.kill(old, signal.SIGKILL)
        wait_for(lambda: lab.backend.child_pid("crypto") not in (0, old), timeout=10)

    gap, replies = ping_during(lab, kill, after=6)
    print(f"longest gap between replies {gap:.2f} s ({replies} replies)")
    assert f"crypto (pid {old}) died" in lab.backend.log_text()
    assert "restored 1 sessions" in lab.backend.log_text()
    assert client.peers()[gateway_key].latest_handshake == handshake  # no new handshake
    assert gap <= MAX_GAP
