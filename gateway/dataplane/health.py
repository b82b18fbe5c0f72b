"""The children's health, as the supervisor sees it: hung, starting, restarting, stopped.

A child with work waiting (awake, or asleep while a ring eventfd or a fd it watches is
ready) that made no progress for HANG_TIMEOUT is hung: it is SIGKILLed, and its exit
restarts it like a crash. A child asleep with nothing ready is idle, never hung. `problems`
says which children do not run their loop right now and why (for /readyz and the systemd
watchdog).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Mapping

from gateway.dataplane.children import Child, ProcessStates
from gateway.dataplane.heartbeat import Stall, ready_fds

log = logging.getLogger(__name__)

# A child with work waiting that makes no progress for this long is hung: it is restarted.
HANG_TIMEOUT = 3.0
# Timers alone turn a loop a few times per second: more turns than BUSY_TURNS between two
# looks is traffic.
BUSY_TURNS = 10


class Health:
    """Watches the children's heartbeats; one `Stall` per child, started anew at each fork."""

    def __init__(self, children: Mapping[str, Child]) -> None:
        self.children = children
        self._stalls: dict[str, Stall] = {}
        self._states = ProcessStates()

    def forked(self, child: Child) -> None:
        """`child` was just (re)started: its progress counts from zero."""
        self._stalls[child.role] = Stall()

    def kill_hung(self) -> bool:
        """SIGKILL every child stuck with work waiting (its exit restarts it); returns
        whether any child carries traffic or is stuck."""
        now = time.monotonic()
        working = False
        for child in self.children.values():
            stuck = self._stuck_for(child, now)
            stall = self._stalls.get(child.role)
            working = working or stuck > 0 or (stall is not None and stall.advanced > BUSY_TURNS)
            if stuck >= HANG_TIMEOUT:
                log.error(
                    "%s (pid %d) is hung: work waiting and no progress for %.1f s; restarting it",
                    child.role,
                    child.pid,
                    stuck,
                )
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, signal.SIGKILL)
        return working

    def _stuck_for(self, child: Child, now: float) -> float:
        """Look at a running child's heartbeat: seconds without progress with work waiting."""
        stall = self._stalls.get(child.role)
        if stall is None or not child.pid or not child.ready:
            return 0.0
        beat = child.heartbeat
        progress = beat.progress()
        work = True  # awake: a loop turn never takes seconds
        if beat.is_asleep():
            fds = child.fds()
            work = ready_fds(fds.rings, beat.watched(), set(fds.other))
        return stall.look(progress, work, now)

    def problems(self) -> list[tuple[str, str]]:
        """Children that do not run their loop right now, with why."""
        found = []
        for child in self.children.values():
            if child.restart_at is not None:
                found.append((child.role, "is waiting to restart"))
            elif not child.pid:
                found.append((child.role, "is not running"))
            elif not child.ready:
                found.append((child.role, "is starting"))
            elif (stall := self._stalls.get(child.role)) is not None and stall.since is not None:
                found.append((child.role, "has work waiting but makes no progress"))
            elif (state := self._states.problem(child.pid)) is not None:
                found.append((child.role, state))
        return found
