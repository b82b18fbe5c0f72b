"""The systemd unit: `systemd-analyze verify` is clean and its exposure is 2.0 or less."""

from __future__ import annotations

import re
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "firezone-gw.service"
INSTALLED_BINARY = "/usr/local/bin/firezone-gw"
MAX_EXPOSURE = 2.0


def _directives() -> dict[str, list[str]]:
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
    d = _directives()
    expected = {
        "Type": "notify",
        "NotifyAccess": "main",
        "Restart": "on-failure",
        "AmbientCapabilities": "CAP_NET_ADMIN",
        "CapabilityBoundingSet": "CAP_NET_ADMIN",
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
