"""When to restart a child that died, and when to stop trying.

Each child has its own `RestartBackoff`. A child that dies soon after starting is restarted
after 0.1 s, then 0.2, 0.4, ... up to 10 s, so a child that cannot start does not spin (and a
crash loop does not flood the journal). A child that ran healthily for a while starts over at
0.1 s: one crash a day is not a streak. The gateway gives up only when one child has failed
without a healthy run for a whole minute: then it truly cannot run (the exit status tells
systemd to step in). Pure policy: `now` is passed in, so it is tested with a fake clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field

INITIAL_DELAY = 0.1  # seconds before the first restart
MAX_DELAY = 10.0
HEALTHY_RUN = 10.0  # a child ready for this long counts as healthy: its next crash starts over
GIVE_UP_AFTER = 60.0  # seconds of failing without a healthy run before the gateway gives up


@dataclass
class RestartBackoff:
    initial: float = INITIAL_DELAY
    maximum: float = MAX_DELAY
    healthy_run: float = HEALTHY_RUN
    give_up_after: float = GIVE_UP_AFTER
    _delay: float = field(init=False, default=0.0)
    _failing_since: float | None = field(init=False, default=None)

    def next_delay(self, ran: float, now: float) -> float | None:
        """The child died at `now` after running healthily (ready) for `ran` seconds.

        Returns the seconds to wait before restarting it, or None: it has been failing for
        `give_up_after` seconds, give up.
        """
        if ran >= self.healthy_run or self._failing_since is None:
            self._failing_since = now
            self._delay = self.initial
        elif now - self._failing_since >= self.give_up_after:
            return None
        delay = self._delay
        self._delay = min(self._delay * 2, self.maximum)
        return delay

    def failing_for(self, now: float) -> float:
        """Seconds since the current streak of failures began (0 without one)."""
        return 0.0 if self._failing_since is None else now - self._failing_since
