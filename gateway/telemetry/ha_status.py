"""An HA pair's state as `show` and /metrics report it: role, replication lag, last sync.

The crypto process (gateway/ha/link.py) replaces `<runtime dir>/ha-status.json` about once a
second; readers take it as it is (no file: not part of an HA pair, nothing reported).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from gateway.telemetry.runtime_dir import runtime_dir

STATUS_FILE = "ha-status.json"
MAX_STATUS_BYTES = 4096
ROLES = ("active", "standby", "fault")


def write_status(status: dict[str, Any], directory: Path | None = None) -> None:
    path = (directory or runtime_dir()) / STATUS_FILE
    tmp = path.with_name(f".{STATUS_FILE}.{os.getpid()}")
    tmp.write_text(json.dumps(status))
    tmp.replace(path)


def read_status(directory: Path | None = None) -> dict[str, Any] | None:
    try:
        with ((directory or runtime_dir()) / STATUS_FILE).open() as handle:
            data = json.loads(handle.read(MAX_STATUS_BYTES))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _number(status: dict[str, Any], key: str) -> float:
    value = status.get(key)
    return float(value) if isinstance(value, int | float) else 0.0


def metrics_text(status: dict[str, Any] | None) -> str:
    """Prometheus families for the status (empty without one)."""
    if status is None:
        return ""
    role = status.get("role")
    lines = [
        "# HELP firezone_gw_ha_role 1 for this node's HA role (keepalived's, via ha-notify).",
        "# TYPE firezone_gw_ha_role gauge",
        *(f'firezone_gw_ha_role{{role="{r}"}} {int(role == r)}' for r in ROLES),
    ]
    gauges = {
        "connected": ("1 while the replication connection is up", "connected"),
        "replication_lag_seconds": ("How old the last replicated batch was", "lag_seconds"),
        "last_sync_timestamp_seconds": ("When the last full resync completed", "last_sync"),
        "replication_queued": ("Changes waiting for the rate bound", "queued"),
    }
    counters = {
        "replication_sent_total": ("Changes sent to the standby", "sent"),
        "replication_applied_total": ("Changes received from the active", "applied"),
        "takeovers_total": ("Times this node took the sessions over", "takeovers"),
        "replication_dropped_total": ("Forged, replayed or malformed messages", "drops"),
    }
    for name, (help_text, key) in gauges.items():
        lines += [
            f"# HELP firezone_gw_ha_{name} {help_text}.",
            f"# TYPE firezone_gw_ha_{name} gauge",
            f"firezone_gw_ha_{name} {_number(status, key)}",
        ]
    for name, (help_text, key) in counters.items():
        lines += [
            f"# HELP firezone_gw_ha_{name} {help_text}.",
            f"# TYPE firezone_gw_ha_{name} counter",
            f"firezone_gw_ha_{name} {_number(status, key):.0f}",
        ]
    return "\n".join(lines) + "\n"


def show_lines(status: dict[str, Any] | None, now: float | None = None) -> list[str]:
    if status is None:
        return []
    now = time.time() if now is None else now
    last = status.get("last_sync")
    synced = "never" if not isinstance(last, int | float) else f"{max(0.0, now - last):.1f} s ago"
    link = "connected" if status.get("connected") else "not connected"
    return [
        f"ha: {status.get('role')}, replication {link}, lag {_number(status, 'lag_seconds'):.3f} s,"
        f" last sync {synced}, takeovers {_number(status, 'takeovers'):.0f},"
        f" dropped {_number(status, 'drops'):.0f}"
    ]
