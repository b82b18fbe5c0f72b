"""`firezone-gw show [--json]`: a `wg show`-like view of the shared counters."""

from __future__ import annotations

import base64
import contextlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

import msgspec
import psutil

from gateway.telemetry import runtime_dir
from gateway.telemetry.stats import StatsSnapshot, read_header

# A segment is created after its supervisor started; allow for the granularity of the
# process start time when comparing the two.
_START_SLACK_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class InterfaceInfo:
    """What `show` prints about the interface, from the gateway's config."""

    name: str
    public_key: str
    listen_port: int


def stats_segment_name(interface: str, pid: int) -> str:
    """The shared-memory name of a running gateway's counters (see the supervisor)."""
    return f"fzgw.{interface}.{pid}.stats"


def _pattern(interface: str) -> re.Pattern[str]:
    return re.compile(rf"fzgw\.{re.escape(interface)}\.(\d+)\.stats")


def remove_dead_segments(interface: str, directory: Path | None = None) -> list[str]:
    """Unlink what crashed supervisors of `interface` left in the runtime directory; call at
    start. Segments of a live supervisor stay; anything else under such a name (only our uid
    can write there) is removed without being opened for reading."""
    pattern = _pattern(interface)
    dir_fd = runtime_dir.make_dir(directory)
    removed = []
    try:
        for name in sorted(os.listdir(dir_fd)):
            match = pattern.fullmatch(name)
            if match is None:
                continue
            created_ns = _created_ns(dir_fd, name, os.geteuid())
            if created_ns is not None and _alive_since(int(match.group(1)), created_ns):
                continue
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=dir_fd)
            removed.append(name)
    finally:
        os.close(dir_fd)
    return removed


def find_stats_segment(interface: str, directory: Path | None = None) -> str | None:
    """The counters of the live gateway serving `interface`, or None when none runs.

    Segments are fzgw.<interface>.<supervisor pid>.stats in the runtime directory; one whose
    supervisor is gone (a crash, or a pid now used by another process), or that is not a
    well-formed segment (a fifo, a link, wrong owner, size or header), is skipped. Of several
    live ones (should not happen: the device name is exclusive) the newest wins. Raises
    UnsafePathError when the directory itself could have been written by someone else.
    """
    pattern = _pattern(interface)
    try:
        dir_fd, owner = runtime_dir.open_dir(directory)
    except FileNotFoundError:
        return None
    best: tuple[int, str] | None = None
    try:
        for name in os.listdir(dir_fd):
            match = pattern.fullmatch(name)
            if match is None:
                continue
            created_ns = _created_ns(dir_fd, name, owner)
            if created_ns is None or not _alive_since(int(match.group(1)), created_ns):
                continue
            if best is None or created_ns > best[0]:
                best = (created_ns, name)
    finally:
        os.close(dir_fd)
    return None if best is None else best[1]


def _created_ns(dir_fd: int, name: str, owner: int) -> int | None:
    try:
        fd, size = runtime_dir.open_file(dir_fd, name, owner)
    except OSError:
        return None
    try:
        return read_header(fd, size, name).created_ns
    except (OSError, ValueError):
        return None
    finally:
        os.close(fd)


def _alive_since(pid: int, created_ns: int) -> bool:
    """Whether `pid` runs and started before the segment was created (not a reused pid)."""
    try:
        started = float(psutil.Process(pid).create_time())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False
    return started <= created_ns / 1e9 + _START_SLACK_SECONDS


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


def format_table(
    snapshot: StatsSnapshot, *, device: str, interface: InterfaceInfo | None = None
) -> str:
    t = snapshot.totals
    busy = snapshot.crypto_busy_fraction
    lines = [f"interface: {device}"]
    if interface is not None:
        lines += [
            f"  public key: {interface.public_key}",
            f"  listening port: {interface.listen_port}",
        ]
    if snapshot.mtu:
        lines.append(f"  mtu: {snapshot.mtu}")
    if snapshot.transport:
        lines.append(f"  per-packet path: {snapshot.transport}")
    lines += [
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


def to_json(snapshot: StatsSnapshot, interface: InterfaceInfo | None = None) -> bytes:
    """The whole snapshot as JSON (keys in base64, times in seconds since the epoch), with
    an "interface" object when `interface` is given."""
    if interface is None:
        return msgspec.json.encode(snapshot)
    data = msgspec.to_builtins(snapshot)
    data["interface"] = msgspec.to_builtins(interface)
    return msgspec.json.encode(data)
