"""Per-peer WireGuard timers (paper section 6, wireguard-go timers.go) as plain deadlines,
and the device's one queue of them.

Each timer is an absolute `now` value or None. Events set or clear them; the device runs
the expired ones from `tick(now)` and asks `next_deadline` how long it may sleep.

The queue is a min-heap with lazy deletion, so an idle device with many peers does no work
per peer: arming a timer pushes an entry only when it is earlier than the entry the timer
already has in the heap (re-arming later, as every packet does, costs nothing); disarming
leaves the entry, which is discarded or moved to the timer's real deadline when it reaches
the head. Invariant: every armed timer has exactly one valid entry, no later than its
deadline. Stale entries (a timer moved earlier, a removed peer) are compacted away once
they outnumber the valid ones, so the heap stays within twice the armed timers.
"""

from __future__ import annotations

import heapq
import itertools
from typing import Any, Generic, TypeVar

INF = float("inf")

TIMER_NAMES = (
    "retransmit_handshake",
    "send_keepalive",
    "new_handshake",
    "zero_key_material",
    "persistent_keepalive",
)
_KINDS = len(TIMER_NAMES)
_COMPACT_SLACK = 64  # stale entries tolerated before compaction is considered

OwnerT = TypeVar("OwnerT")


class _Deadline:
    """One timer of PeerTimers: stores the deadline and keeps the queue's invariant."""

    __slots__ = ("kind",)

    def __init__(self, kind: int) -> None:
        self.kind = kind

    def __get__(self, timers: PeerTimers, owner: object = None) -> float | None:
        return timers.deadlines[self.kind]

    def __set__(self, timers: PeerTimers, deadline: float | None) -> None:
        kind = self.kind
        timers.deadlines[kind] = deadline
        if deadline is not None and timers.queue is not None:
            queued = timers.queued_at[kind]
            if queued is None or deadline < queued:
                timers.queue.push(timers, kind, deadline)


class PeerTimers:
    """A peer's five timers and handshake bookkeeping; `attach` puts them on a queue."""

    __slots__ = (
        "deadlines",
        "handshake_attempts",
        "last_sent_handshake",
        "need_another_keepalive",
        "owner",
        "queue",
        "queued_at",
        "queued_seq",
        "sent_last_minute_handshake",
    )

    retransmit_handshake = _Deadline(0)
    send_keepalive = _Deadline(1)
    new_handshake = _Deadline(2)
    zero_key_material = _Deadline(3)
    persistent_keepalive = _Deadline(4)

    def __init__(self) -> None:
        self.deadlines: list[float | None] = [None] * _KINDS
        # The valid heap entry of each timer: its deadline and sequence number (None: none).
        self.queued_at: list[float | None] = [None] * _KINDS
        self.queued_seq: list[int | None] = [None] * _KINDS
        self.queue: TimerQueue[Any] | None = None
        self.owner: Any = None
        self.need_another_keepalive = False
        self.handshake_attempts = 0
        self.sent_last_minute_handshake = False
        self.last_sent_handshake = -INF

    def attach(self, queue: TimerQueue[OwnerT], owner: OwnerT) -> None:
        """Queue this peer's timers (`owner` comes back from `TimerQueue.pop_due`)."""
        self.queue = queue
        self.owner = owner
        for kind, deadline in enumerate(self.deadlines):
            if deadline is not None:
                queue.push(self, kind, deadline)

    def detach(self) -> None:
        """Leave the queue (the peer is gone): its entries become stale."""
        if self.queue is not None:
            self.queue.invalidate(self)
        self.queue = None
        self.owner = None  # no peer <-> timers cycle: a removed peer is freed at once

    def clear(self) -> None:
        self.deadlines[:] = [None] * _KINDS
        self.need_another_keepalive = False


def next_deadline(timers: PeerTimers) -> float | None:
    """The earliest armed deadline, or None when every timer is idle."""
    armed = [d for d in timers.deadlines if d is not None]
    return min(armed) if armed else None


def expired(timers: PeerTimers, now: float) -> list[str]:
    """Names of the timers due at `now`, disarmed; the caller runs their actions in order."""
    due = []
    deadlines = timers.deadlines
    for kind, name in enumerate(TIMER_NAMES):
        value = deadlines[kind]
        if value is not None and value <= now:
            deadlines[kind] = None
            due.append(name)
    return due


class TimerQueue(Generic[OwnerT]):
    """Every attached peer's timers in one heap of (deadline, seq, timers, kind)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, PeerTimers, int]] = []
        self._seq = itertools.count()
        self._valid = 0  # entries that are some timer's valid one
        self.pops = 0  # entries taken off the heap, ever (work done, for tests)

    def __len__(self) -> int:
        return len(self._heap)

    @property
    def valid_entries(self) -> int:
        return self._valid

    def push(self, timers: PeerTimers, kind: int, deadline: float) -> None:
        seq = next(self._seq)
        if timers.queued_seq[kind] is None:
            self._valid += 1
        timers.queued_at[kind] = deadline
        timers.queued_seq[kind] = seq
        heapq.heappush(self._heap, (deadline, seq, timers, kind))
        if len(self._heap) > 2 * self._valid + _COMPACT_SLACK:
            self._compact()

    def invalidate(self, timers: PeerTimers) -> None:
        for kind in range(_KINDS):
            if timers.queued_seq[kind] is not None:
                self._valid -= 1
            timers.queued_at[kind] = timers.queued_seq[kind] = None
        if len(self._heap) > 2 * self._valid + _COMPACT_SLACK:
            self._compact()

    def next_deadline(self) -> float | None:
        """The earliest armed deadline of any attached timer; O(1) unless the head is stale."""
        heap = self._heap
        while heap:
            entry = heap[0]
            deadline, seq, timers, kind = entry
            actual = timers.deadlines[kind]
            if timers.queued_seq[kind] == seq and actual == deadline:
                return deadline
            self._take_head(entry)
        return None

    def pop_due(self, now: float) -> list[OwnerT]:
        """Owners with a timer due at `now`, each once, in the order their first timer fell
        due; their timers stay armed (`expired` disarms them). O(log n) per entry taken."""
        heap = self._heap
        due: dict[int, OwnerT] = {}
        while heap and heap[0][0] <= now:
            entry = heap[0]
            _, seq, timers, kind = entry
            actual = timers.deadlines[kind]
            if timers.queued_seq[kind] == seq and actual is not None and actual <= now:
                self._forget(entry)
                due.setdefault(id(timers), timers.owner)
            else:
                self._take_head(entry)
        return list(due.values())

    def _take_head(self, entry: tuple[float, int, PeerTimers, int]) -> None:
        """The head is stale, disarmed or early: drop it, re-queued at the real deadline."""
        self._forget(entry)
        timers, kind = entry[2], entry[3]
        actual = timers.deadlines[kind]
        if timers.queued_seq[kind] is None and actual is not None and timers.queue is self:
            self.push(timers, kind, actual)

    def _forget(self, entry: tuple[float, int, PeerTimers, int]) -> None:
        heapq.heappop(self._heap)
        self.pops += 1
        _, seq, timers, kind = entry
        if timers.queued_seq[kind] == seq:
            timers.queued_at[kind] = timers.queued_seq[kind] = None
            self._valid -= 1

    def _compact(self) -> None:
        self._heap = [e for e in self._heap if e[2].queued_seq[e[3]] == e[1]]
        heapq.heapify(self._heap)
