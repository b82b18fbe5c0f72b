"""Sleeping in one epoll on ring eventfds and plain fds, without losing a wake-up.

A process first does all the work it can; only then it arms the rings it waits on (consumer
side: data may come; producer side: room may come) and sleeps in epoll. Plain fds (TUN queue,
UDP socket) are level-triggered and switched off while their downstream ring is full, so a
full ring never turns into a busy loop: the kernel's own queue holds or drops the surplus.
The process's `Heartbeat` learns when it sleeps and which plain fds its epoll waits on, so
the supervisor can tell an idle process from a hung one.
"""

from __future__ import annotations

import select
from collections.abc import Sequence

from gateway.dataplane.heartbeat import Heartbeat
from shm_ring.ring import Ring, arm_all, disarm_all


class Sleeper:
    def __init__(
        self,
        consumers: Sequence[Ring] = (),
        producers: Sequence[Ring] = (),
        heartbeat: Heartbeat | None = None,
    ) -> None:
        self.epoll = select.epoll()
        self.heartbeat = heartbeat if heartbeat is not None else Heartbeat.detached()
        self._watched: dict[int, int] = {}
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
        if not arm_all(consumers, producers):
            return []
        self.heartbeat.asleep(True)
        try:
            return self.epoll.poll(-1 if timeout is None else max(timeout, 0.0))
        finally:
            self.heartbeat.asleep(False)
            disarm_all(consumers, producers)

    def close(self) -> None:
        self.epoll.close()
