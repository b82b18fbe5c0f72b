"""Sleeping in one epoll on ring eventfds and plain fds, without losing a wake-up.

A process first does all the work it can; only then it arms the rings it waits on (consumer
side: data may come; producer side: room may come) and sleeps in epoll. Plain fds (TUN queue,
UDP socket) are level-triggered and switched off while their downstream ring is full, so a
full ring never turns into a busy loop: the kernel's own queue holds or drops the surplus.
The process's `Heartbeat` learns when it sleeps and which plain fds its epoll waits on, so
the supervisor can tell an idle process from a hung one.

Spin before sleeping. Each hop of a packet through the gateway wakes the next process with an
eventfd, and on busy cores a wake-up takes 100+ us; a request/response (ping, a small RPC)
crosses six hops. So while traffic flows (the last sleep ended with a ring or fd event less
than SPIN_WINDOW ago), `sleep` first polls its rings and fds for up to SPIN_SECONDS without
arming: the answer usually comes back within that and the process carries on awake. An idle
process (its last wake-up was a timeout, or long ago) sleeps at once, so idle stays idle: at
most one spin per wake-up that carried traffic.
"""

from __future__ import annotations

import os
import select
import time
from collections.abc import Sequence

from gateway.dataplane.heartbeat import Heartbeat
from shm_ring.ring import Ring, arm_all, disarm_all

SPIN_SECONDS = 100e-6  # poll this long before sleeping while traffic flows
SPIN_WINDOW = 1e-3  # "traffic flows": the last sleep ended with an event this recently


class Sleeper:
    def __init__(
        self,
        consumers: Sequence[Ring] = (),
        producers: Sequence[Ring] = (),
        heartbeat: Heartbeat | None = None,
        *,
        spin: float = SPIN_SECONDS,
        spin_window: float = SPIN_WINDOW,
    ) -> None:
        self.epoll = select.epoll()
        self._spin_seconds = spin
        self._spin_window = spin_window
        self.heartbeat = heartbeat if heartbeat is not None else Heartbeat.detached()
        self._watched: dict[int, int] = {}
        self._woken_by_event_at = -1.0  # monotonic time the last sleep ended with an event
        for ring in consumers:
            self.epoll.register(ring.consumer_fd(), select.EPOLLIN)
        for ring in producers:
            self.epoll.register(ring.producer_fd(), select.EPOLLIN)

    def watch(self, fd: int, events: int) -> None:
        """Wake on `events` of `fd` (0 to stop watching it for now)."""
        previous = self._watched.get(fd)
        if previous == events:
            return
        if previous is None:
            self.epoll.register(fd, events)
        else:
            self.epoll.modify(fd, events)
        self._watched[fd] = events
        self.heartbeat.watching(fd, events)

    def unwatch(self, fd: int) -> None:
        if self._watched.pop(fd, None) is not None:
            self.epoll.unregister(fd)
            self.heartbeat.watching(fd, 0)

    def sleep(
        self,
        consumers: Sequence[Ring],
        producers: Sequence[Ring] = (),
        timeout: float | None = None,
    ) -> list[tuple[int, int]]:
        """Wait until a ring or fd has something (or `timeout` seconds); returns fd events.

        Returns at once, with no events, when a ring already has work.
        """
        if time.monotonic() - self._woken_by_event_at < self._spin_window:
            events = self._spin(consumers, producers)
            if events is not None:
                self._woken_by_event_at = time.monotonic()
                return events
        if not arm_all(consumers, producers):
            return []
        self.heartbeat.asleep(True)
        try:
            events = self.epoll.poll(-1 if timeout is None else max(timeout, 0.0))
        finally:
            self.heartbeat.asleep(False)
            disarm_all(consumers, producers)
        if events:
            self._woken_by_event_at = time.monotonic()
        return events

    def _spin(
        self, consumers: Sequence[Ring], producers: Sequence[Ring]
    ) -> list[tuple[int, int]] | None:
        """Poll without arming for SPIN_SECONDS: the fd events, [] for ring work, or None."""
        poll = self.epoll.poll
        monotonic = time.monotonic
        end = monotonic() + self._spin_seconds
        while True:
            if any(r.recv_ready() for r in consumers) or any(r.send_ready() for r in producers):
                return []
            events = poll(0)  # the plain fds (level-triggered); unarmed ring fds stay quiet
            if events:
                return events
            if monotonic() >= end:
                return None
            os.sched_yield()  # the process we are waiting for may need this core

    def close(self) -> None:
        self.epoll.close()
