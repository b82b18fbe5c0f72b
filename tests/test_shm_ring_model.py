"""Model-based test: random send/send_many/recv_many/release against a deque, with wrap-around."""

from __future__ import annotations

from collections import deque

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from shm_ring import Ring
from tests.ring_helpers import unique_ring_name, unlink_quietly

MAX_SLOT = 48


class RingModel(RuleBasedStateMachine):
    """The ring must behave like a bounded FIFO of byte strings."""

    ring: Ring
    name: str

    def __init__(self) -> None:
        super().__init__()
        self.queued: deque[bytes] = deque()  # published, not yet received
        self.received: list[bytes] = []  # received, not yet released
        self.full_events = 0
        self.sent = 0
        self.sent_bytes = 0
        self.high = 0

    @initialize(slots=st.integers(1, 6), slot_size=st.integers(1, MAX_SLOT))
    def make(self, slots: int, slot_size: int) -> None:
        self.name = unique_ring_name("model")
        self.ring = Ring.create(self.name, slots=slots, slot_size=slot_size)
        self.slots, self.slot_size = slots, slot_size

    def _room(self) -> int:
        return self.slots - len(self.queued) - len(self.received)

    def _published(self, packets: list[bytes]) -> None:
        self.queued.extend(packets)
        self.sent += len(packets)
        self.sent_bytes += sum(map(len, packets))
        if packets:
            self.high = max(self.high, self.slots - self._room())

    @rule(data=st.binary(min_size=1, max_size=MAX_SLOT))
    def send(self, data: bytes) -> None:
        if len(data) > self.slot_size:
            return  # oversize is covered by the unit tests; keep the model simple
        ok = self.ring.send(data)
        assert ok == (self._room() > 0)
        if ok:
            self._published([data])
        else:
            self.full_events += 1

    @rule(packets=st.lists(st.binary(min_size=1, max_size=MAX_SLOT), max_size=8))
    def send_many(self, packets: list[bytes]) -> None:
        packets = [p[: self.slot_size] for p in packets]
        room = self._room()
        taken = self.ring.send_many(packets)
        assert taken == min(room, len(packets))
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
        self.received.clear()

    @invariant()
    def counters_match(self) -> None:
        if not hasattr(self, "ring"):
            return
        stats = self.ring.stats()
        assert stats.packets == self.sent
        assert stats.bytes == self.sent_bytes
        assert stats.occupancy == len(self.queued) + len(self.received)
        assert stats.full_events == self.full_events
        assert stats.high_water == self.high
        assert self.ring.send_ready() == (self._room() > 0)

    def teardown(self) -> None:
        if hasattr(self, "ring"):
            self.ring.close()
            unlink_quietly(self.name)


RingModel.TestCase.settings = settings(max_examples=150, stateful_step_count=60, deadline=None)
TestRingModel = RingModel.TestCase
