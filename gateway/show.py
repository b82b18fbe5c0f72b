"""`firezone-gw show [--json]`: a `wg show`-like view of the shared counters."""

from __future__ import annotations

import base64

import msgspec

from gateway.stats import StatsSnapshot

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")
_PERIODS = (("year", 365 * 86400), ("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1))


def format_bytes(count: int) -> str:
    """Like `wg show`: '512 B', '1.50 KiB', '3.20 GiB'."""
    if count < 1024:  # noqa: PLR2004 (one KiB)
        return f"{count} B"
    value = float(count)
    unit = 0
    while value >= 1024 and unit < len(_UNITS) - 1:  # noqa: PLR2004 (one KiB)
        value /= 1024
        unit += 1
    return f"{value:.2f} {_UNITS[unit]}"


def format_ago(seconds: float) -> str:
    """Like `wg show`: '1 minute, 5 seconds ago'; 'Now' under a second."""
    left = int(seconds)
    if left <= 0:
        return "Now"
    parts = []
    for name, size in _PERIODS:
        amount, left = divmod(left, size)
        if amount:
            parts.append(f"{amount} {name}{'' if amount == 1 else 's'}")
    return ", ".join(parts) + " ago"


def format_table(snapshot: StatsSnapshot, *, device: str) -> str:
    t = snapshot.totals
    busy = snapshot.crypto_busy_fraction
    lines = [
        f"interface: {device}",
        f"  workers: {snapshot.workers}",
        f"  crypto busy: {'n/a' if busy is None else f'{busy:.1%}'}",
        f"  transfer: {format_bytes(t.udp_rx_bytes)} received, {format_bytes(t.udp_tx_bytes)} sent",
        f"  handshakes: {t.handshakes_completed} completed, {t.handshakes_rejected} rejected",
        f"  drops: {sum(snapshot.drops.values())}",
    ]
    peers = sorted(snapshot.peers, key=lambda p: p.last_handshake, reverse=True)
    for peer in peers:
        lines += ["", f"peer: {base64.b64encode(peer.public_key).decode()}"]
        if peer.endpoint:
            lines.append(f"  endpoint: {peer.endpoint}")
        if peer.last_handshake:
            ago = format_ago(snapshot.taken_at - peer.last_handshake)
            lines.append(f"  latest handshake: {ago}")
        if peer.rx_bytes or peer.tx_bytes:
            lines.append(
                f"  transfer: {format_bytes(peer.rx_bytes)} received,"
                f" {format_bytes(peer.tx_bytes)} sent"
            )
    return "\n".join(lines) + "\n"


def to_json(snapshot: StatsSnapshot) -> bytes:
    """The whole snapshot as JSON (keys in base64, times in seconds since the epoch)."""
    return msgspec.json.encode(snapshot)
