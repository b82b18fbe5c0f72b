"""The one-line status systemd shows (`systemctl status`): peers and throughput."""

from __future__ import annotations

import time

from gateway.telemetry import stats as st

ACTIVE_PEER_SECONDS = 180.0  # handshake this recent: an active peer (REJECT_AFTER_TIME)


class StatusLine:
    """Peers, active peers and the UDP throughput since the previous line."""

    def __init__(self, stats: st.StatsRegion, workers: int) -> None:
        self.stats = stats
        self.workers = workers
        self._last: tuple[float, int, int] | None = None  # (time, rx bytes, tx bytes)

    def line(self) -> str:
        snap = self.stats.snapshot(sample_processes=False, peer_limit=0)
        now = time.monotonic()
        rx, tx = snap.totals.udp_rx_bytes, snap.totals.udp_tx_bytes
        rates = ""
        if self._last is not None:
            then, rx_then, tx_then = self._last
            elapsed = max(now - then, 1e-3)
            rates = f", in {_rate(rx - rx_then, elapsed)}, out {_rate(tx - tx_then, elapsed)}"
        self._last = (now, rx, tx)
        peers, active = self.stats.peers.count(handshake_since=snap.taken_at - ACTIVE_PEER_SECONDS)
        return f"{peers} peers ({active} active){rates}, {self.workers} workers"


def _rate(count: int, seconds: float) -> str:
    value = count / seconds
    for unit in ("B/s", "KiB/s", "MiB/s"):
        if value < 1024:  # noqa: PLR2004 (one KiB)
            return f"{value:.0f} {unit}" if unit == "B/s" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB/s"
