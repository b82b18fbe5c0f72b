"""How busy each process was lately, and its CPU time and memory (psutil): for a reader.

Each process adds the nanoseconds it spent working to its BUSY_NS word; `BusySamples`
remembers every process's value about once a second (the supervisor's tick), so a reader
can say what share of the last BUSY_WINDOW_SECONDS a process worked. `ProcessSampler` asks
the kernel (psutil) for a process's CPU seconds and resident memory.
"""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import psutil

BUSY_WINDOW_SECONDS = 10.0

Sample = tuple[int, tuple[int, ...]]  # (monotonic ns, every process's BUSY_NS then)


class BusySamples:
    """The last 256 samples of every process's busy time."""

    def __init__(self) -> None:
        self._samples: collections.deque[Sample] = collections.deque(maxlen=256)

    def add(self, now: int, busy: tuple[int, ...]) -> None:
        self._samples.append((now, busy))

    def reference(self, now: int) -> Sample | None:
        """The newest sample at least BUSY_WINDOW_SECONDS old, else the oldest one."""
        window_start = now - int(BUSY_WINDOW_SECONDS * 1e9)
        chosen = None
        for sample in self._samples:
            if sample[0] >= now:
                break
            if chosen is None or sample[0] <= window_start:
                chosen = sample
        return chosen


def busy_fraction(
    now: int,
    busy_now: int,
    reference: Sample | None,
    index: int,
    start: tuple[int, int],
) -> float | None:
    """Process `index`'s share of the time since `reference` (or since it started, a
    (monotonic ns, BUSY_NS then) pair) spent working; None if it never attached."""
    started, busy_at_start = start
    if reference is not None and started and reference[0] >= started:
        since, busy_then = reference[0], reference[1][index]
    elif started:
        since, busy_then = started, busy_at_start
    else:
        return None  # the process never attached
    elapsed = now - since
    if elapsed <= 0:
        return None
    return min(1.0, max(0.0, (busy_now - busy_then) / elapsed))


class ProcessSampler:
    """CPU seconds and RSS of processes by pid, keeping psutil's handle of each."""

    def __init__(self) -> None:
        self._processes: dict[int, psutil.Process] = {}

    def sample(self, pid: int) -> tuple[float | None, int | None]:
        """(user + system CPU seconds, RSS bytes); (None, None) for pid 0 or a process gone."""
        if pid == 0:
            return None, None
        import psutil  # noqa: PLC0415 - not loaded at start: a restart forwards sooner

        try:
            proc = self._processes.get(pid) or psutil.Process(pid)
            self._processes[pid] = proc
            with proc.oneshot():
                times = proc.cpu_times()
                rss = int(proc.memory_info().rss)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            self._processes.pop(pid, None)
            return None, None
        return float(times.user + times.system), rss
