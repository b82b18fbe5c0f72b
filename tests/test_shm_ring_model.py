"""Model-based test: random send/send_many/recv_many/release against a deque, with wrap-around
and messages of mixed sizes (one slot, several slots, several slots across the ring's end)."""

from __future__ import annotations

from collections import deque

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from shm_ring import Ring
from tests.ring_helpers import unique_ring_name

MAX_SLOT = 48
STRIDE = 64  # every slot_size up to MAX_SLOT rounds up to one cache line
MAX_MESSAGE = 6 * STRIDE + 20  # over the largest ring: exercises the size check too
messages = st.one_of(
    st.binary(min_size=1, max_size=MAX_SLOT),
    st.integers(1, MAX_MESSAGE).map(lambda n: bytes(i % 251 for i in range(n))),
)


def slots_for(n: int) -> int:
    return max(1, -(-n // STRIDE))


class RingModel(RuleBasedStateMachine):
    """The ring must behave like a bounded FIFO of byte strings, bounded in slots."""

    ring: Ring

    def __init__(self) -> None:
        super().__init__()
        self.queued: deque[bytes] = deque()  # published, not yet received
        self.received: list[bytes] = []  # received, not yet released
        self.full_events = 0
        self.sent = 0
        self.sent_bytes = 0
        self.released = 0
        self.high = 0

    @initialize(slots=st.integers(1, 6), slot_size=st.integers(1, MAX_SLOT))
    def make(self, slots: int, slot_size: int) -> None:
        self.ring = Ring.create(unique_ring_name("model"), slots=slots, slot_size=slot_size)
        self.slots = slots
        assert self.ring.max_message == slots * STRIDE

    def _used(self) -> int:
        return sum(slots_for(len(p)) for p in (*self.queued, *self.received))

    def _room(self) -> int:
        return self.slots - self._used()

    def _published(self, packets: list[bytes]) -> None:
        self.queued.extend(packets)
        self.sent += len(packets)
        self.sent_bytes += sum(map(len, packets))
        if packets:
            self.high = max(self.high, self._used())

    @rule(data=messages)
    def send(self, data: bytes) -> None:
        if len(data) > self.ring.max_message:
            with pytest.raises(ValueError, match="ring messages must be"):
                self.ring.send(data)
            return
        assert self.ring.fits(len(data)) == (slots_for(len(data)) <= self._room())
        ok = self.ring.send(data)
        assert ok == (slots_for(len(data)) <= self._room())
        if ok:
            self._published([data])
        else:
            self.full_events += 1

    @rule(packets=st.lists(messages, max_size=8))
    def send_many(self, packets: list[bytes]) -> None:
        packets = [p[: self.ring.max_message] for p in packets]
        room, fit = self._room(), 0
        for p in packets:
            if slots_for(len(p)) > room:
                break
            room -= slots_for(len(p))
            fit += 1
        taken = self.ring.send_many(packets)
        assert taken == fit
        if taken < len(packets):
            self.full_events += 1
        self._published(packets[:taken])

    @rule(max_packets=st.integers(1, 8))
    def recv_many(self, max_packets: int) -> None:
        views = self.ring.recv_many(max_packets)
        got = [bytes(v) for v in views]
        del views
        expected = [self.queued.popleft() for _ in range(min(max_packets, len(self.queued)))]
        assert got == expected
        self.received.extend(got)

    @precondition(lambda self: hasattr(self, "ring"))
    @rule()
    def release(self) -> None:
        self.ring.release()
        self.released += len(self.received)
        self.received.clear()

    @invariant()
    def counters_match(self) -> None:
        if not hasattr(self, "ring"):
            return
        stats = self.ring.stats()
        assert stats.packets == self.sent
        assert stats.bytes == self.sent_bytes
        assert stats.released == self.released
        assert stats.occupancy == self._used()
        assert stats.full_events == self.full_events
        assert stats.high_water == self.high
        assert self.ring.free_slots() == self._room()
        assert self.ring.send_ready() == (self._room() > 0)

    def teardown(self) -> None:
        if hasattr(self, "ring"):
            self.ring.close()


RingModel.TestCase.settings = settings(max_examples=150, stateful_step_count=60, deadline=None)
TestRingModel = RingModel.TestCase
