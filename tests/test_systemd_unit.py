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

from gateway.uapi.server import CONTROL_DIR_ENV

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "firezone-gw.service"
SYSUSERS = UNIT.with_name("firezone-gw.sysusers")
TMPFILES = UNIT.with_name("firezone-gw.tmpfiles")
INSTALLED_BINARY = "/usr/bin/firezone-gw"
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


def unit_control_dir() -> str:
    """Where the unit has the gateway bind its control socket."""
    (setting,) = [v for v in unit_directives()["Environment"] if v.startswith(CONTROL_DIR_ENV)]
    return setting.partition("=")[2]


def test_run_wireguard_is_roots_and_the_socket_is_linked_in_by_root() -> None:
    d = unit_directives()
    # The gateway binds in its own runtime directory, never in /run/wireguard.
    assert unit_control_dir() == f"/run/{d['RuntimeDirectory'][0]}"
    assert not any("/run/wireguard" in v for v in d["ReadWritePaths"])
    assert not any("/run/wireguard" in v for v in d["BindPaths"])
    # Root (the "+" prefix) links the name `wg` looks for before the start, removes it after.
    assert d["ExecStartPre"] == [
        f"+{INSTALLED_BINARY} --config /etc/firezone-gw/gateway.toml link-control-socket"
    ]
    assert d["ExecStopPost"] == [f"+{INSTALLED_BINARY} unlink-control-socket"]
    # At boot tmpfiles.d makes /run/wireguard root's and writable by nobody else.
    (entry,) = [
        line.split()
        for line in TMPFILES.read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert entry[:5] == ["d", "/run/wireguard", "0755", "root", "root"]


def test_start_limit_ends_the_retries() -> None:
    d = unit_directives()
    interval = float(d["StartLimitIntervalSec"][0].removesuffix("s"))
    burst = int(d["StartLimitBurst"][0])
    restart = float(d["RestartSec"][0].removesuffix("s"))
    assert 1 < burst <= 10
    assert burst * restart < interval  # failing at once, the tries hit the limit


def test_tmpfiles_entry_is_valid(tmp_path: Path) -> None:
    proc = subprocess.run(
        ["systemd-tmpfiles", f"--root={tmp_path}", "--create", str(TMPFILES)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    made = (tmp_path / "run" / "wireguard").stat()
    assert (made.st_uid, made.st_mode & 0o7777) == (0, 0o755)


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
