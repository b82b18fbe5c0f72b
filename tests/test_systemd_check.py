"""The package and the unit on a real systemd (`make systemd-check`): Debian 12 booted with
systemd as PID 1 in systemd-nspawn (testbed/nspawn.py), the .deb that `make deb` builds
installed with apt (offline: the container has no network), and the unit driven as an
operator would: start on a fresh /run, READY=1, watchdog, reload with a new peer, kill -9,
an MTU change, `systemd-analyze security`, stop, the start limit, upgrade, remove, purge.

The tests share one container and run in file order; each leaves the gateway as the next
expects. The container and its cgroups are removed even when a test fails.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway import keys
from testbed.nspawn import ROOTFS_CACHE, Container, ensure_rootfs

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
UNIT = "firezone-gw.service"
CONF = "/etc/firezone-gw/gateway.toml"
MAX_EXPOSURE = 1.7


def wait_until(what: str, check: Callable[[], bool], timeout: float = 30) -> float:
    """Seconds until `check()` held; fails naming `what` after `timeout`."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if check():
            return time.monotonic() - start
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout} s: {what}")


@pytest.fixture(scope="module")
def debs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The package as `make deb` builds it, and the same with a higher version (an upgrade)."""
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run(
        ["bash", "packaging/deb/build.sh"],
        cwd=REPO,
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "OUT": str(out), "WORK": str(out / "w")},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    deb = Path(proc.stdout.split()[-1])
    tree = out / "w" / "root"
    control = tree / "DEBIAN" / "control"
    text = control.read_text()
    control.write_text(re.sub(r"^Version: (\S+)$", r"Version: \1+check1", text, flags=re.M))
    newer = out / "firezone-gw_newer_amd64.deb"
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "-b", str(tree), str(newer)],
        check=True,
        capture_output=True,
    )
    shutil.rmtree(out / "w")
    return deb, newer


@pytest.fixture(scope="module")
def box(debs: tuple[Path, Path]) -> Iterator[Container]:
    rootfs = ensure_rootfs(ROOTFS_CACHE)
    with Container(rootfs, binds={debs[0].parent: "/srv/dist"}) as container:
        # No udev in the container: the TUN clone device as a standard host has it.
        container.sh("chmod 0666 /dev/net/tun")
        yield container


def show(box: Container, *props: str) -> dict[str, str]:
    out = box.run("systemctl", "show", UNIT, *(f"--property={p}" for p in props)).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def running(box: Container) -> bool:
    return show(box, "ActiveState", "SubState") == {"ActiveState": "active", "SubState": "running"}


def test_the_package_installs_offline(box: Container, debs: tuple[Path, Path]) -> None:
    box.run("apt-get", "install", "-y", "-q", f"/srv/dist/{debs[0].name}", timeout=300)
    out = box.sh(
        "stat -c '%U %G %a' /etc/firezone-gw /etc/firezone-gw/gateway.toml "
        "/etc/firezone-gw/private.key /run/wireguard; readlink -f /usr/bin/firezone-gw"
    )
    assert out.split("\n")[:5] == [
        "root firezone-gw 750",
        "root firezone-gw 640",
        "firezone-gw firezone-gw 600",  # a key made on first install, the gateway's own
        "root root 755",  # tmpfiles.d
        "/opt/firezone-gw/bin/firezone-gw",
    ]
    box.run("firezone-gw", "check-config")


def test_the_unit_starts_on_a_fresh_run(box: Container) -> None:
    # /run as after a boot before anything made /run/wireguard (the unit must not need it).
    box.sh("rm -rf /run/wireguard")
    box.run("systemctl", "enable", "--now", UNIT, timeout=60)
    # Type=notify: active (running) only after READY=1.
    wait_until("active (running)", lambda: running(box))
    state = show(box, "StatusText", "NRestarts", "Result")
    assert state["NRestarts"] == "0", box.sh("journalctl -u firezone-gw --no-pager")
    assert " peers " in state["StatusText"]
    assert box.sh("stat -c '%U %a' /run/wireguard").strip() == "root 755"
    assert box.sh("readlink /run/wireguard/fzgw0.sock").strip() == "/run/firezone-gw/fzgw0.sock"
    assert "interface: fzgw0" in box.run("wg", "show", "fzgw0").stdout  # root's wg, via the link


def test_the_watchdog_is_pinged(box: Container) -> None:
    first = int(show(box, "WatchdogTimestampMonotonic")["WatchdogTimestampMonotonic"])
    wait_until(
        "a WATCHDOG=1 ping",
        lambda: int(show(box, "WatchdogTimestampMonotonic")["WatchdogTimestampMonotonic"]) > first,
    )


def test_reload_with_a_new_peer_keeps_the_main_pid(box: Container) -> None:
    pid = show(box, "MainPID")["MainPID"]
    peer = keys.encode_key(keys.public_key(keys.generate_private_key()))
    box.run(
        "sh",
        "-c",
        f"cat >> {CONF}",
        stdin=f'\n[[peers]]\npublic_key = "{peer}"\nallowed_ips = ["100.64.0.2/32"]\n',
    )
    box.run("systemctl", "reload", UNIT)
    wait_until("wg show lists the new peer", lambda: peer in box.run("wg", "show", "fzgw0").stdout)
    assert show(box, "MainPID")["MainPID"] == pid
    assert running(box)
    took = wait_until(
        "StatusText counts the new peer",
        lambda: show(box, "StatusText")["StatusText"].startswith("1 peers"),
        timeout=20,
    )
    assert took < 5  # was ~12 s (issue 24)


def test_kill_9_of_the_main_pid_is_restarted(box: Container) -> None:
    pid = show(box, "MainPID")["MainPID"]
    box.run("kill", "-9", pid)
    wait_until(
        "a new main PID, running",
        lambda: show(box, "MainPID")["MainPID"] not in ("0", pid) and running(box),
    )
    assert show(box, "NRestarts")["NRestarts"] == "1"


def test_an_mtu_change_is_followed(box: Container) -> None:
    box.run("ip", "link", "set", "fzgw0", "mtu", "1400")
    wait_until(
        "the gateway follows the MTU",
        lambda: "MTU changed from 1280 to 1400" in box.sh("journalctl -u firezone-gw --no-pager"),
    )


def test_exposure(box: Container) -> None:
    out = box.run("systemd-analyze", "security", "--no-pager", UNIT).stdout
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out)
    assert match, out[-2000:]
    assert float(match.group(1)) <= MAX_EXPOSURE


def test_an_upgrade_keeps_config_and_key(box: Container, debs: tuple[Path, Path]) -> None:
    before = box.sh(f"md5sum {CONF} /etc/firezone-gw/private.key")
    pid = show(box, "MainPID")["MainPID"]
    box.run("apt-get", "install", "-y", "-q", f"/srv/dist/{debs[1].name}", timeout=300)
    assert box.sh(f"md5sum {CONF} /etc/firezone-gw/private.key") == before  # the peer kept
    assert "+check1" in box.sh("dpkg-query -W -f '${Version}' firezone-gw")
    wait_until(
        "restarted on the new code",
        lambda: running(box) and show(box, "MainPID")["MainPID"] not in ("0", pid),
    )


def test_stop_leaves_nothing(box: Container) -> None:
    box.run("systemctl", "stop", UNIT)
    assert show(box, "ActiveState")["ActiveState"] == "inactive"
    assert box.run("pgrep", "-u", "firezone-gw", check=False).stdout == ""
    assert box.run("ip", "link", "show", "fzgw0", check=False).returncode != 0
    assert box.sh("ls -A /run/wireguard; ls -d /run/firezone-gw 2>/dev/null || true") == ""


def test_a_unit_that_cannot_start_stops_at_the_start_limit(box: Container) -> None:
    box.sh(f"cp {CONF} /root/good.toml && echo 'no_such_key = 1' >> {CONF}")
    box.run("systemctl", "reset-failed", UNIT)
    since = box.sh("date +%s").strip()

    def log() -> str:
        return box.sh(f"journalctl -u firezone-gw --no-pager --since @{since}")

    box.run("systemctl", "start", "--no-block", UNIT)
    wait_until(
        "Start request repeated too quickly", lambda: "repeated too quickly" in log(), timeout=60
    )
    time.sleep(3)  # and no try after that
    assert show(box, "ActiveState")["ActiveState"] == "failed"
    text = log()
    assert text.count("Starting firezone-gw.service") == 5, text  # StartLimitBurst
    assert text.count("no_such_key: unknown key") == 5, text  # each try said why
    box.sh(f"cp /root/good.toml {CONF}")
    box.run("systemctl", "reset-failed", UNIT)


def test_remove_stops_it_and_purge_removes_config_and_user(box: Container) -> None:
    box.run("systemctl", "start", UNIT, timeout=60)
    wait_until("running again", lambda: running(box))
    box.run("apt-get", "remove", "-y", "-q", "firezone-gw", timeout=300)
    assert box.run("pgrep", "-u", "firezone-gw", check=False).stdout == ""
    assert box.sh("ls /etc/firezone-gw").split() == ["gateway.toml", "private.key"]
    box.run("apt-get", "purge", "-y", "-q", "firezone-gw", timeout=300)
    assert box.run("ls", "/etc/firezone-gw", check=False).returncode != 0
    assert box.run("getent", "passwd", "firezone-gw", check=False).returncode != 0
    assert box.run("getent", "group", "firezone-gw", check=False).returncode != 0
    assert box.run("ls", "/opt/firezone-gw", check=False).returncode != 0
