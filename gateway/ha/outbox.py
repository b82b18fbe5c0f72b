"""What the active still has to send, coalesced and bounded in rate (sans-I/O).

Changes are kept by identity (codec: `key()`), the newest winning, so the outbox never holds
more than one change per piece of state however fast it changes. `take` hands out at most
`rate` bytes a second (a token bucket with one second of burst), estimated per change, so a
resync of a large table is spread over seconds instead of flooding the link or the loop.
"""

from __future__ import annotations

from typing import Any

from gateway.ha.codec import MAX_CHANGES, Batch, Change, ResyncDone

CHANGE_BYTES = 160  # a Session is about 150 bytes as msgpack; others are smaller


class Outbox:
    def __init__(self, rate: int) -> None:
        if rate < CHANGE_BYTES:
            raise ValueError(f"rate of {rate} bytes/s is below one change")
        self.rate = rate
        self._pending: dict[Any, Change] = {}
        self._tokens = float(rate)
        self._last: float | None = None
        self.sent = 0

    def __len__(self) -> int:
        return len(self._pending)

    def put(self, change: Change) -> None:
        # In place when pending: a change never moves behind a resync's ResyncDone.
        self._pending[change.key()] = change

    def resync(self, changes: list[Change]) -> None:
        """Everything, for a standby that (re)joined, ended by ResyncDone."""
        self._pending.clear()
        for change in changes:
            self.put(change)
        self.put(ResyncDone())

    def take(self, now: float, wall: float) -> Batch | None:
        """The changes the rate allows now, or None."""
        if self._last is not None:
            self._tokens = min(float(self.rate), self._tokens + (now - self._last) * self.rate)
        self._last = now
        count = min(len(self._pending), MAX_CHANGES, int(self._tokens // CHANGE_BYTES))
        if count <= 0:
            return None
        keys = list(self._pending)[:count]
        changes = [self._pending.pop(k) for k in keys]
        self._tokens -= count * CHANGE_BYTES
        self.sent += count
        return Batch(wall, changes)
