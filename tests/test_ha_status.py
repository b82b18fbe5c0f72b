"""ha-notify records keepalived's state where the gateway reads it; the status file becomes
`show` lines and /metrics families."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from gateway.cli import main
from gateway.ha import role
from gateway.ha.role import read_role
from gateway.telemetry import ha_status


def test_ha_notify_writes_the_role(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FIREZONE_GW_RUNTIME_DIR", str(tmp_path / "run"))
    runner = CliRunner()
    for state, expected in (("MASTER", "active"), ("backup", "standby"), ("FAULT", "fault")):
        result = runner.invoke(main, ["ha-notify", state])
        assert result.exit_code == 0, result.output
        assert read_role() == expected
    assert runner.invoke(main, ["ha-notify", "PRIMARY"]).exit_code != 0


def test_status_as_metrics_and_show(tmp_path: Path) -> None:
    assert ha_status.read_status(tmp_path) is None
    assert ha_status.metrics_text(None) == "" and ha_status.show_lines(None) == []
    ha_status.write_status(
        {"role": "standby", "connected": True, "lag_seconds": 0.25, "last_sync": 100.0},
        tmp_path,
    )
    status = ha_status.read_status(tmp_path)
    text = ha_status.metrics_text(status)
    assert 'firezone_gw_ha_role{role="standby"} 1' in text
    assert 'firezone_gw_ha_role{role="active"} 0' in text
    assert "firezone_gw_ha_replication_lag_seconds 0.25" in text
    assert "firezone_gw_ha_last_sync_timestamp_seconds 100.0" in text
    (line,) = ha_status.show_lines(status, now=102.0)
    assert "standby, replication connected, lag 0.250 s, last sync 2.0 s ago" in line


def test_the_keepalived_example_calls_the_hook_for_each_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """config/keepalived-ha.conf's notify hooks name states the hook accepts."""
    monkeypatch.setenv("FIREZONE_GW_RUNTIME_DIR", str(tmp_path / "run"))
    text = Path("config/keepalived-ha.conf").read_text()
    hooks = dict(re.findall(r'notify_(\w+) "/usr/bin/python3 -m gateway\.ha\.role (\w+)"', text))
    assert hooks == {"master": "MASTER", "backup": "BACKUP", "fault": "FAULT"}
    for state in hooks.values():
        assert role.main([state]) == 0
        assert read_role() == role.KEEPALIVED_STATES[state]
