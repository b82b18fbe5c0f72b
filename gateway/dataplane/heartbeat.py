"""Progress heartbeats of the child processes, so the supervisor can tell hung from idle.

Layout: one anonymous MAP_SHARED mapping (no file, no fd: nothing to leak or to clean up),
made by the supervisor before it forks, one 64-byte slot per child role, so writers never
share a cache line. A slot is 8 native u64 words, all written by the child alone:

    0        progress: bumped once per loop turn and around every sleep
    1        asleep: 1 while the child waits in epoll with nothing to do
    2..7     up to 3 (fd, epoll events) pairs: the plain fds (TUN queue, UDP socket, control
             sockets) the child's epoll watches besides its ring eventfds, fd -1 = unused

The supervisor reads the slots once per tick (`Stall`). A child is *stalled* while it has work
waiting but its counter stands still: it is awake (a loop turn never takes seconds), or it is
asleep although something its epoll waits on is ready (a ring eventfd, or a watched fd with
its events), which would have woken a running process at once. A child asleep with nothing
ready is idle, never hung. The supervisor resets a slot before each fork; a crashed child
leaves only stale numbers that the next fork overwrites.
"""

from __future__ import annotations

import mmap
import select
from collections.abc import Iterable
from dataclasses import dataclass

SLOT_WORDS = 8
SLOT_BYTES = SLOT_WORDS * 8
MAX_WATCHED = 3
_PROGRESS, _ASLEEP, _WATCHED = 0, 1, 2


class Heartbeat:
    """One child's slot. The child calls `beat()` every loop turn; the Sleeper does the rest."""

    __slots__ = ("_words",)

    def __init__(self, words: memoryview) -> None:
        self._words = words

    @classmethod
    def detached(cls) -> Heartbeat:
        """A slot nobody watches (unit tests, tools that run a loop outside the gateway)."""
        beat = cls(memoryview(bytearray(SLOT_BYTES)).cast("Q"))
        beat.reset()  # fd slots empty (-1), not fd 0: else watching() finds no free slot
        return beat

    def reset(self) -> None:
        words = self._words
        words[_PROGRESS] = words[_ASLEEP] = 0
        for i in range(_WATCHED, SLOT_WORDS, 2):
            words[i] = 2**64 - 1  # fd -1
            words[i + 1] = 0

    def beat(self) -> None:
        self._words[_PROGRESS] += 1

    def asleep(self, sleeping: bool) -> None:
        words = self._words
        words[_PROGRESS] += 1
        words[_ASLEEP] = int(sleeping)

    def watching(self, fd: int, events: int) -> None:
        """Record that the child's epoll waits for `events` (0: nothing) on plain fd `fd`."""
        words = self._words
        free = -1
        for i in range(_WATCHED, SLOT_WORDS, 2):
            if words[i] == fd:
                words[i + 1] = events
                return
            if free < 0 and words[i] == 2**64 - 1:
                free = i
        if free < 0:
            raise ValueError(f"a heartbeat records at most {MAX_WATCHED} watched fds")
        words[free + 1] = events
        words[free] = fd

    # ---- read by the supervisor ---------------------------------------------------------

    def progress(self) -> int:
        return int(self._words[_PROGRESS])

    def is_asleep(self) -> bool:
        return bool(self._words[_ASLEEP])

    def watched(self) -> list[tuple[int, int]]:
        words = self._words
        return [
            (int(words[i]), int(words[i + 1]))
            for i in range(_WATCHED, SLOT_WORDS, 2)
            if words[i] != 2**64 - 1 and words[i + 1]
        ]


class Heartbeats:
    """The shared mapping with one `Heartbeat` per role; create before forking."""

    def __init__(self, roles: Iterable[str]) -> None:
        names = list(roles)
        self._mm = mmap.mmap(-1, max(1, len(names)) * SLOT_BYTES, flags=mmap.MAP_SHARED)
        words = memoryview(self._mm).cast("Q")
        self.slots = {
            role: Heartbeat(words[i * SLOT_WORDS : (i + 1) * SLOT_WORDS])
            for i, role in enumerate(names)
        }
        for slot in self.slots.values():
            slot.reset()

    def __getitem__(self, role: str) -> Heartbeat:
        return self.slots[role]


def ready_fds(wake_fds: Iterable[int], watched: Iterable[tuple[int, int]], known: set[int]) -> bool:
    """Whether anything a sleeping child's epoll waits on is ready right now.

    `wake_fds` are its ring eventfds (always registered, readable = woken); `watched` are the
    (fd, events) pairs it published, looked at only when the supervisor holds that same fd
    (`known`), so a number the child made up or reused is never polled.
    """
    poller = select.poll()
    for fd in wake_fds:
        poller.register(fd, select.POLLIN)
    for fd, events in watched:
        if fd in known:
            poller.register(fd, events & (select.POLLIN | select.POLLOUT))
    return bool(poller.poll(0))


@dataclass
class Stall:
    """The supervisor's view of one child: progress seen at the last look, since when stuck."""

    last_progress: int = -1
    last_look: float = 0.0
    since: float | None = None  # no progress since then, with work waiting
    advanced: int = 0  # loop turns between the last two looks

    def look(self, progress: int, work_waiting: bool, now: float) -> float:
        """Record one look; returns for how many seconds the child is stuck (0: it is not)."""
        moved = progress != self.last_progress
        self.advanced = progress - self.last_progress if self.last_progress >= 0 else 0
        if moved or not work_waiting:
            self.since = None
        elif self.since is None:
            self.since = self.last_look  # it had not moved since the previous look either
        self.last_progress, self.last_look = progress, now
        return 0.0 if self.since is None else now - self.since
