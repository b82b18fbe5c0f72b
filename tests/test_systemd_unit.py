"""The systemd unit: `systemd-analyze verify` is clean, its exposure is 2.0 or less, and it
runs as a system user of its own (declared for systemd-sysusers) with only CAP_NET_ADMIN and
CAP_NET_BIND_SERVICE.
tests/test_least_privilege.py runs the gateway with exactly these privileges."""

from __future__ import annotations

import re
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "firezone-gw.service"
SYSUSERS = UNIT.with_name("firezone-gw.sysusers")
CONTROL_DIR_SETUP = re.compile(
    r"\+/usr/bin/install -d -m (1[0-7]{3}) -o root -g (\S+) /run/wireguard"
)
INSTALLED_BINARY = "/usr/local/bin/firezone-gw"
MAX_EXPOSURE = 2.0


def unit_directives() -> dict[str, list[str]]:
    found: dict[str, list[str]] = defaultdict(list)
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            found[key].append(value)
    return found


@pytest.fixture
def unit_copy(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at a stand-in binary (verify checks it exists)."""
    binary = tmp_path / "firezone-gw"
    binary.write_text("#!/bin/sh\nexit 0\n")
    binary.chmod(0o755)
    text = UNIT.read_text()
    assert INSTALLED_BINARY in text
    unit = tmp_path / "firezone-gw.service"
    unit.write_text(text.replace(INSTALLED_BINARY, str(binary)))
    return unit


def test_verify_is_clean(unit_copy: Path) -> None:
    proc = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit_copy)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == ""
    assert proc.stdout.strip() == ""


def test_exposure_at_most_two(unit_copy: Path) -> None:
    proc = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(unit_copy)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", proc.stdout)
    assert match, proc.stdout[-2000:]
    assert float(match.group(1)) <= MAX_EXPOSURE, proc.stdout


def test_required_settings() -> None:
    d = unit_directives()
    expected = {
        "Type": "notify",
        "User": "firezone-gw",
        "Group": "firezone-gw",
        "NotifyAccess": "main",
        "Restart": "on-failure",
        "AmbientCapabilities": "CAP_NET_ADMIN CAP_NET_BIND_SERVICE",
        "CapabilityBoundingSet": "CAP_NET_ADMIN CAP_NET_BIND_SERVICE",
        "DeviceAllow": "/dev/net/tun rw",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_NETLINK AF_UNIX",
        "ConfigurationDirectory": "firezone-gw",
        "RuntimeDirectory": "firezone-gw",
        "EnvironmentFile": "-/etc/default/firezone-gw",
    }
    for key, value in expected.items():
        assert d[key] == [value], key
    assert "@system-service" in d["SystemCallFilter"]
    assert d["WatchdogSec"]
    assert d["ExecStart"][0].startswith(f"{INSTALLED_BINARY} ")
    assert "DynamicUser" not in d  # the key file must belong to a user that exists


def unit_control_dir_mode() -> tuple[int, str]:
    """The mode and group the unit gives /run/wireguard before starting the gateway."""
    (setup,) = [
        m for line in unit_directives()["ExecStartPre"] if (m := CONTROL_DIR_SETUP.match(line))
    ]
    return int(setup.group(1), 8), setup.group(2)


def test_control_socket_directory_is_writable_by_the_group_and_sticky() -> None:
    mode, group = unit_control_dir_mode()
    assert group == unit_directives()["Group"][0]
    assert mode & 0o1070 == 0o1070  # group rwx, and sticky: only a socket's owner removes it
    assert mode & 0o002 == 0  # never world-writable
    assert "/run/wireguard" in unit_directives()["ReadWritePaths"]


def test_sysusers_declares_the_units_user_and_group(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    proc = subprocess.run(
        ["systemd-sysusers", f"--root={root}", str(SYSUSERS)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    d = unit_directives()
    (user,) = (root / "etc" / "passwd").read_text().splitlines()
    name, _, uid, gid, _, _, shell = user.split(":")
    assert name == d["User"][0]
    assert 0 < int(uid) < 1000  # a system user
    assert shell.endswith("nologin")
    (group,) = (root / "etc" / "group").read_text().splitlines()
    assert group.split(":")[0::2] == [d["Group"][0], gid]
