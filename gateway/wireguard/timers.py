"""Per-peer WireGuard timers (paper section 6, wireguard-go timers.go) as plain deadlines.

Each timer is an absolute `now` value or None. Events set or clear them; the device runs
the expired ones from `tick(now)` and asks `next_deadline` how long it may sleep.
"""

from __future__ import annotations

from dataclasses import dataclass

INF = float("inf")


@dataclass(slots=True)
class PeerTimers:
    retransmit_handshake: float | None = None
    send_keepalive: float | None = None
    new_handshake: float | None = None
    zero_key_material: float | None = None
    persistent_keepalive: float | None = None
    need_another_keepalive: bool = False
    handshake_attempts: int = 0
    sent_last_minute_handshake: bool = False
    last_sent_handshake: float = -INF

    def clear(self) -> None:
        self.retransmit_handshake = self.send_keepalive = self.new_handshake = None
        self.zero_key_material = self.persistent_keepalive = None
        self.need_another_keepalive = False


TIMER_NAMES = (
    "retransmit_handshake",
    "send_keepalive",
    "new_handshake",
    "zero_key_material",
    "persistent_keepalive",
)


def next_deadline(timers: PeerTimers) -> float | None:
    """The earliest armed deadline, or None when every timer is idle."""
    best = INF
    for value in (
        timers.retransmit_handshake,
        timers.send_keepalive,
        timers.new_handshake,
        timers.zero_key_material,
        timers.persistent_keepalive,
    ):
        if value is not None and value < best:
            best = value
    return None if best == INF else best


def expired(timers: PeerTimers, now: float) -> list[str]:
    """Names of the timers due at `now`, disarmed; the caller runs their actions in order."""
    due = []
    for name in TIMER_NAMES:
        value = getattr(timers, name)
        if value is not None and value <= now:
            setattr(timers, name, None)
            due.append(name)
    return due
