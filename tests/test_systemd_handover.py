"""Sessions survive the supervisor under a real systemd (issue 22): Debian 12 booted with
systemd 252 as PID 1 in systemd-nspawn (testbed/nspawn.py), the unit of systemd/ with this
worktree's gateway (linked as /usr/bin/firezone-gw, run as root by a drop-in: the package
and the sandbox are tests/test_systemd_check.py's business), and a wireguard-go client in
a namespace of the container pinging the gateway's tunnel address every 50 ms.

- `kill -9` of the main PID: systemd restarts the unit, the new supervisor takes the TUN
  queues, the UDP socket and the run-state memfds back from the fd store: same device
  (ifindex), same socket (inode), the client's session goes on (no new handshake).
- SIGUSR2, sent as `systemctl kill -s USR2` does by default (to every process of the unit:
  the children and the upgrade check ignore it): the same main PID, no restart.
- `systemctl stop` empties the fd store: the device is gone.

The container and its cgroups are removed even when a test fails.
"""

from __future__ import annotations

import re
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway import keys
from testbed.nspawn import ROOTFS_CACHE, Container, ensure_rootfs
from tests.gateway_lab import MAX_GAP, longest_gap

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
WIREGUARD_GO = Path(shutil.which("wireguard-go") or "/usr/bin/wireguard-go")  # the client
UNIT = "firezone-gw.service"
CONF = "/etc/firezone-gw/gateway.toml"
GATEWAY_TUNNEL = "100.64.0.1"
CLIENT_TUNNEL = "100.64.0.2"
PORT = 51820
MAX_RESTART_GAP = 10.0  # seconds: a new supervisor process loads the gateway's code first


def wait_until(what: str, check: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout} s: {what}")


def show(box: Container, *props: str) -> dict[str, str]:
    out = box.run("systemctl", "show", UNIT, *(f"--property={p}" for p in props)).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def running(box: Container) -> bool:
    return show(box, "ActiveState", "SubState") == {"ActiveState": "active", "SubState": "running"}


def journal(box: Container) -> str:
    return box.sh("journalctl -u firezone-gw --no-pager -o cat", check=False)


def drop_in() -> str:
    return (
        "[Service]\nExecStart=\n"
        f"ExecStart=/usr/bin/firezone-gw --config {CONF} --workers 2 run\n"
        # The worktree's venv runs a Python under /root: as root, with /root visible.
        "User=\nGroup=\nProtectHome=no\n"
    )


@pytest.fixture(scope="module")
def box() -> Iterator[Container]:
    rootfs = ensure_rootfs(ROOTFS_CACHE)
    python_home = Path(sys.base_prefix)
    binds = {
        REPO: str(REPO),
        python_home: str(python_home),
        WIREGUARD_GO: "/usr/local/bin/wireguard-go",
        Path("/usr/bin/ping"): "/usr/local/bin/ping",  # the minimal root file system has none
    }
    with Container(rootfs, binds=binds) as container:
        container.sh("chmod 0666 /dev/net/tun; useradd -r -M -s /usr/sbin/nologin firezone-gw")
        gateway_key, client_key = keys.generate_private_key(), keys.generate_private_key()
        container.run("install", "-d", "-m", "0750", "/etc/firezone-gw")
        container.run(
            "sh",
            "-c",
            "umask 077; cat > /etc/firezone-gw/private.key",
            stdin=keys.encode_key(gateway_key) + "\n",
        )
        container.run(
            "sh",
            "-c",
            "umask 077; cat > /root/client.key",
            stdin=keys.encode_key(client_key) + "\n",
        )
        client_public = keys.encode_key(keys.public_key(client_key))
        container.run(
            "sh",
            "-c",
            f"cat > {CONF}",
            stdin=(
                '[interface]\nname = "fzgw0"\nprivate_key_file = "/etc/firezone-gw/private.key"\n'
                f'listen_port = {PORT}\naddresses = ["{GATEWAY_TUNNEL}/24"]\nmtu = 1280\n\n'
                f'[[peers]]\npublic_key = "{client_public}"\n'
                f'allowed_ips = ["{CLIENT_TUNNEL}/32"]\n'
            ),
        )
        # The unit as shipped; /usr/bin/firezone-gw (ExecStart=, ExecStartPre=, SIGUSR2's
        # exec) is this worktree's.
        container.sh(f"ln -s {REPO}/.venv/bin/firezone-gw /usr/bin/firezone-gw")
        container.sh(f"cp {REPO}/systemd/firezone-gw.service /etc/systemd/system/")
        container.sh("mkdir -p /etc/systemd/system/firezone-gw.service.d")
        container.run(
            "sh", "-c", "cat > /etc/systemd/system/firezone-gw.service.d/test.conf", stdin=drop_in()
        )
        container.run("systemctl", "daemon-reload")
        started = container.run("systemctl", "start", UNIT, timeout=90, check=False)
        assert started.returncode == 0, journal(container)[-3000:]
        wait_until("active (running)", lambda: running(container))
        gateway_public = keys.encode_key(keys.public_key(gateway_key))
        container.sh(
            "ip netns add c\n"
            "ip link add vg type veth peer name vc netns c\n"
            "ip addr add 192.168.77.1/24 dev vg && ip link set vg up\n"
            "ip -n c addr add 192.168.77.2/24 dev vc && ip -n c link set vc up\n"
            "ip -n c link set lo up\n"
            "ip netns exec c wireguard-go wgc\n"
            f"ip netns exec c wg set wgc private-key /root/client.key peer {gateway_public} "
            f"endpoint 192.168.77.1:{PORT} allowed-ips {GATEWAY_TUNNEL}/32\n"
            f"ip -n c addr add {CLIENT_TUNNEL}/32 dev wgc && ip -n c link set wgc up\n"
            f"ip -n c route add {GATEWAY_TUNNEL}/32 dev wgc\n"
        )
        try:
            wait_until("the client reaches the gateway", lambda: client_pings(container), 60)
        except AssertionError as exc:
            state = container.sh(
                "ip netns exec c wg show; ip -br a; ip -n c -br a; ip -n c route", check=False
            )
            raise AssertionError(f"{exc}\n{state}\n{journal(container)[-2000:]}") from None
        yield container


def client_pings(box: Container) -> bool:
    ping = ("ip", "netns", "exec", "c", "ping", "-c1", "-W1", GATEWAY_TUNNEL)
    return box.run(*ping, check=False).returncode == 0


def latest_handshake(box: Container) -> int:
    out = box.run("ip", "netns", "exec", "c", "wg", "show", "wgc", "latest-handshakes").stdout
    return int(out.split()[1])


def udp_inode(box: Container) -> str:
    """The inode of the socket bound to the listen port (what `ss` would show)."""
    for table in ("/proc/net/udp6", "/proc/net/udp"):
        for line in box.sh(f"cat {table}").splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == PORT:
                return fields[9]
    raise AssertionError("no socket on the listen port")


def device(box: Container) -> str:
    return box.sh("cat /sys/class/net/fzgw0/ifindex").strip()


def ping_across(box: Container, action: Callable[[], None], seconds: int = 12) -> float:
    """Ping every 50 ms from the client while `action()` runs; the longest gap."""
    box.sh(
        f"setsid sh -c 'ip netns exec c ping -D -i 0.05 -W 1 -w {seconds} {GATEWAY_TUNNEL} "
        "> /root/ping.out 2>&1' < /dev/null > /dev/null 2>&1 &"
    )
    time.sleep(2)
    action()

    def ended() -> bool:
        return "packet loss" in box.sh("cat /root/ping.out")

    wait_until("the ping ended", ended, seconds + 10)
    output = box.sh("cat /root/ping.out").encode()
    end = float(re.findall(rb"^\[(\d+\.\d+)\]", output, re.MULTILINE)[-1])
    gap, _ = longest_gap(output, end)
    return gap


RESTART_STEPS = (  # journal lines that time a restart after kill -9 (printed, not asserted)
    "Main process exited",
    "Scheduled restart job",
    "link-control-socket",
    "kept TUN device",
    "restored ",
    "Started ",
)


def restart_timeline(box: Container) -> str:
    """The restart's steps from the journal (monotonic seconds), after the first kill."""
    lines = box.sh(
        "journalctl --no-pager -o short-monotonic -u firezone-gw -u init.scope", check=False
    ).splitlines()
    start = next((i for i, line in enumerate(lines) if RESTART_STEPS[0] in line), len(lines))
    return "\n".join(line for line in lines[start:] if any(step in line for step in RESTART_STEPS))


def test_kill_9_of_the_main_pid_keeps_device_socket_and_sessions(box: Container) -> None:
    pid = show(box, "MainPID")["MainPID"]
    before = (device(box), udp_inode(box), latest_handshake(box))
    stored = show(box, "NFileDescriptorStore")["NFileDescriptorStore"]
    assert stored == "6", stored  # tun0, tun1, udp, state, timestamps, sessions

    def kill() -> None:
        box.run("kill", "-9", pid)
        wait_until(
            "a new main PID, running",
            lambda: show(box, "MainPID")["MainPID"] not in ("0", pid) and running(box),
        )

    gap = ping_across(box, kill)
    print(f"kill -9 of the supervisor under systemd: longest gap {gap:.2f} s")
    print(restart_timeline(box))
    log = journal(box)
    assert show(box, "NRestarts")["NRestarts"] == "1"
    assert "kept TUN device fzgw0 with its 2 queues" in log, log[-3000:]
    assert "restored 1 sessions" in log, log[-3000:]
    assert (device(box), udp_inode(box), latest_handshake(box)) == before
    assert show(box, "NFileDescriptorStore")["NFileDescriptorStore"] == "6"  # none twice
    # The pause is systemd's restart: ExecStopPost= and ExecStartPre= (each a Python
    # process), 100 ms, then Python loading the gateway: 1.4-2.1 s on a 2-core VM (was
    # 1.9-4 s before the imports were cut), not the ≤ 1 s of a child's restart.
    assert gap <= MAX_RESTART_GAP


def test_sigusr2_upgrades_in_place_under_systemd(box: Container) -> None:
    pid, restarts = show(box, "MainPID", "NRestarts").values()
    before = (device(box), udp_inode(box), latest_handshake(box))

    def upgrade() -> None:
        box.run("systemctl", "kill", "-s", "USR2", UNIT)
        try:
            wait_until("the new code took over", lambda: journal(box).count("kept UDP") >= 2)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{journal(box)[-3000:]}") from None

    gap = ping_across(box, upgrade)
    print(f"SIGUSR2 under systemd: longest gap {gap:.2f} s")
    assert show(box, "MainPID", "NRestarts") == {"MainPID": pid, "NRestarts": restarts}
    assert show(box, "NFileDescriptorStore")["NFileDescriptorStore"] == "6"  # none twice
    assert running(box)
    assert (device(box), udp_inode(box), latest_handshake(box)) == before
    assert gap <= MAX_GAP


def test_a_clean_stop_empties_the_fd_store(box: Container) -> None:
    box.run("systemctl", "stop", UNIT, timeout=60)
    assert show(box, "ActiveState")["ActiveState"] == "inactive"
    assert box.run("ip", "link", "show", "fzgw0", check=False).returncode != 0
    assert show(box, "NFileDescriptorStore")["NFileDescriptorStore"] == "0"
