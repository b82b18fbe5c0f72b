"""An in-memory `Tun` for unit tests of the modules that use a TUN queue.

It mirrors the kernel's observable behaviour: packets whose first nibble is not 4 or 6 are
rejected (counted, like EINVAL), a full outbound buffer makes `send_ready()` False and drops
further writes as would-block, and `fileno()` is an eventfd that is readable exactly while
injected packets wait to be received, so the code under test can use `epoll` unchanged.
"""

from __future__ import annotations

import contextlib
import os
from collections import deque
from collections.abc import Sequence

from tunio.base import DEFAULT_BATCH, TunStats
from tunio.errors import TunError

IP_VERSIONS = frozenset({4, 6})


class FakeTun:
    """A bounded in-memory TUN queue: `inject()` plays the kernel, `take_sent()` the network."""

    def __init__(self, capacity: int = 1000) -> None:
        if capacity <= 0:
            raise TunError(f"FakeTun capacity must be positive, got {capacity}")
        self.capacity = capacity
        self.stats = TunStats()
        self.up = True
        self._inbound: deque[bytes] = deque()
        self._sent: deque[bytes] = deque()
        self._event = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)

    # -- the test's side ---------------------------------------------------------------
    def inject(self, packet: bytes) -> bool:
        """Queue a packet for `recv_many` (the kernel routing one into the device)."""
        if len(self._inbound) >= self.capacity:
            return False  # the kernel drops when the device's queue is full, too
        if not self._inbound:
            os.eventfd_write(self._event, 1)
        self._inbound.append(bytes(packet))
        return True

    def take_sent(self) -> list[bytes]:
        """Everything written with `send` since the last call (frees room for more)."""
        sent = list(self._sent)
        self._sent.clear()
        return sent

    # -- the Tun protocol ----------------------------------------------------------------
    def recv_many(self, max_packets: int = DEFAULT_BATCH) -> list[bytes]:
        batch = [self._inbound.popleft() for _ in range(min(max_packets, len(self._inbound)))]
        if batch and not self._inbound:
            with contextlib.suppress(BlockingIOError):
                os.eventfd_read(self._event)
        self.stats.received += len(batch)
        return batch

    def send_ready(self) -> bool:
        return self.up and len(self._sent) < self.capacity

    def send(self, packet: bytes | bytearray | memoryview) -> bool:
        if not self.up:
            self.stats.dropped_device_down += 1
            return False
        if len(packet) == 0 or packet[0] >> 4 not in IP_VERSIONS:
            self.stats.dropped_rejected += 1
            return False
        if len(self._sent) >= self.capacity:
            self.stats.dropped_would_block += 1
            return False
        self._sent.append(bytes(packet))
        self.stats.sent += 1
        return True

    def send_many(self, packets: Sequence[bytes | bytearray | memoryview]) -> int:
        return sum(self.send(p) for p in packets)

    def fileno(self) -> int:
        return self._event

    def close(self) -> None:
        if self._event >= 0:
            os.close(self._event)
            self._event = -1
