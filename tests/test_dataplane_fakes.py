"""The in-memory ring behaves as shm_ring.Ring for every call the crypto loop makes."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as hs

from shm_ring.ring import Ring
from tests.dataplane_fakes import POISON, MemoryRing
from tests.ring_helpers import unique_ring_name

SLOTS, SLOT_SIZE = 4, 16

operations = hs.lists(
    hs.one_of(
        hs.tuples(hs.just("send_many"), hs.lists(hs.integers(1, SLOT_SIZE), max_size=6)),
        hs.tuples(hs.just("recv_many"), hs.integers(0, 6)),
        hs.tuples(hs.just("release"), hs.none()),
    ),
    max_size=30,
)


@settings(max_examples=60, deadline=None)
@given(operations)
def test_memory_ring_matches_the_shared_memory_ring(ops: list[tuple[str, object]]) -> None:
    name = unique_ring_name("fake")
    real = Ring.create(name, slots=SLOTS, slot_size=SLOT_SIZE)
    fake = MemoryRing(SLOTS, SLOT_SIZE)
    counter = 0
    try:
        for op, arg in ops:
            if op == "send_many":
                assert isinstance(arg, list)
                packets = [bytes([(counter + i) % 256]) * size for i, size in enumerate(arg)]
                counter += len(arg)
                assert fake.send_many(packets) == real.send_many(packets)
            elif op == "recv_many":
                assert isinstance(arg, int)
                got_fake, got_real = fake.recv_many(arg), real.recv_many(arg)
                assert [bytes(p) for p in got_fake] == [bytes(p) for p in got_real]
                del got_real  # views into the segment must go before it is closed
            else:
                fake.release()
                real.release()
            assert (fake.free_slots(), fake.send_ready()) == (real.free_slots(), real.send_ready())
        assert fake.full_events == real.stats().full_events
    finally:
        real.close()


def test_a_packet_used_after_release_reads_as_poison() -> None:
    ring = MemoryRing(2, 8)
    ring.send(b"abc")
    (view,) = ring.recv_many()
    ring.release()
    assert bytes(view) == bytes([POISON]) * 3
