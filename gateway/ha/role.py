"""The role keepalived gives this node, kept in `<runtime dir>/ha-role`.

keepalived's notify hooks write it (`firezone-gw ha-notify MASTER|BACKUP|FAULT`, or this
module run directly, `python3 -m gateway.ha.role MASTER`: the same in a tenth of the time,
which is failover time on a busy host); the crypto process's HA link reads it every 0.1 s,
and a restarted gateway finds it. Imports nothing heavy on purpose.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from gateway.telemetry.runtime_dir import runtime_dir

ROLE_FILE = "ha-role"
KEEPALIVED_STATES = {"MASTER": "active", "BACKUP": "standby", "FAULT": "fault"}


def role_path(directory: Path | None = None) -> Path:
    return (directory or runtime_dir()) / ROLE_FILE


def write_role(state: str, directory: Path | None = None) -> str:
    """keepalived's state (MASTER, BACKUP, FAULT) as the role file; the role it names."""
    role = KEEPALIVED_STATES[state.upper()]
    path = role_path(directory)
    tmp = path.with_name(f".{ROLE_FILE}.{os.getpid()}")
    tmp.write_text(role + "\n")
    tmp.replace(path)  # atomic: a reader sees the old role or the new one
    return role


def read_role(directory: Path | None = None) -> str | None:
    try:
        text = role_path(directory).read_text()[:16].strip()
    except OSError:
        return None
    return text if text in KEEPALIVED_STATES.values() else None


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0].upper() not in KEEPALIVED_STATES:
        print("usage: python3 -m gateway.ha.role MASTER|BACKUP|FAULT", file=sys.stderr)
        return 2
    try:
        # Not make_dir's owner check: under systemd the directory is the gateway user's
        # (RuntimeDirectory=) and keepalived may run this hook as root or as that user.
        runtime_dir().mkdir(mode=0o700, exist_ok=True)
        print(f"ha: {write_role(argv[0])}")
    except OSError as exc:
        print(f"Error: cannot record the HA role: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
