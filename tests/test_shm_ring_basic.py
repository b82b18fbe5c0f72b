"""shm_ring API: geometry and message validation, full/empty, stats, restart, multi-slot."""

from __future__ import annotations

import os
import select
from collections.abc import Iterator

import pytest

from shm_ring import MAX_SLOT_SIZE, MAX_SLOTS, Ring, arm_all, disarm_all
from tests.ring_helpers import fork_child, kill_child, unique_ring_name, wait_child


@pytest.fixture
def name() -> Iterator[str]:
    n = unique_ring_name()
    yield n
    assert not os.path.exists(f"/dev/shm/{n}")  # rings never have a name in the filesystem


@pytest.mark.parametrize(
    ("slots", "slot_size", "limit"),
    [
        (0, 1280, f"1..{MAX_SLOTS}"),
        (-5, 1280, f"1..{MAX_SLOTS}"),
        (MAX_SLOTS + 1, 1280, f"1..{MAX_SLOTS}"),
        (True, 1280, f"1..{MAX_SLOTS}"),
        (10.0, 1280, f"1..{MAX_SLOTS}"),
        (1000, 0, f"1..{MAX_SLOT_SIZE}"),
        (1000, MAX_SLOT_SIZE + 1, f"1..{MAX_SLOT_SIZE}"),
        (MAX_SLOTS, MAX_SLOT_SIZE, "limit"),
    ],
)
def test_nonsense_geometry_is_refused_naming_the_limit(
    name: str, slots: int, slot_size: int, limit: str
) -> None:
    with pytest.raises(ValueError, match=limit):
        Ring.create(name, slots=slots, slot_size=slot_size)


def test_an_empty_label_is_refused() -> None:
    with pytest.raises(ValueError, match="ring name"):
        Ring.create("")


def test_defaults_and_mtu_sized_geometries(name: str) -> None:
    with Ring.create(name) as ring:
        assert (ring.slots, ring.slot_size) == (1000, 1280)
    for slot_size in (1420 + 20, 9000 + 20):
        with Ring.create(name, slot_size=slot_size) as ring:
            size = len(ring._mm)
            assert ring.send(bytes(slot_size))
            # Fixed slots of the MTU size, not 65535: at most one cache line of padding each.
            assert size < 1000 * (slot_size + 64) + 8192


def test_oversized_and_empty_packets_raise_without_corruption(name: str) -> None:
    with Ring.create(name, slots=4, slot_size=100) as ring:  # stride 128: up to 512 bytes
        assert ring.max_message == 512
        assert ring.send(b"first")
        with pytest.raises(ValueError, match=r"513 bytes.*1\.\.512"):
            ring.send(bytes(513))
        with pytest.raises(ValueError, match=r"0 bytes.*1\.\.512"):
            ring.send(b"")
        with pytest.raises(ValueError, match=r"packet 1 of 600 bytes"):
            ring.send_many([b"second", bytes(600), b"never"])
        with pytest.raises(ValueError, match=r"packet 1 of 0 bytes"):
            ring.send_many([b"second", b"", b"never"])
        stats = ring.stats()
        assert (stats.packets, stats.bytes) == (1, 5)  # a batch with a bad packet is refused
        assert [bytes(v) for v in ring.recv_many()] == [b"first"]
        ring.release()
        assert ring.send(bytes(100))
        assert [len(v) for v in ring.recv_many()] == [100]
        ring.release()


def test_full_ring_refuses_counts_and_tracks_high_water(name: str) -> None:
    with Ring.create(name, slots=3, slot_size=8) as ring:
        assert ring.free_slots() == 3
        assert ring.send_many([b"1", b"2"]) == 2
        assert ring.send_ready()
        assert ring.free_slots() == 1
        assert ring.send_many([b"3", b"4", b"5"]) == 1
        assert not ring.send_ready()
        assert ring.free_slots() == 0
        assert not ring.send(b"6")
        stats = ring.stats()
        assert (stats.full_events, stats.high_water, stats.occupancy) == (2, 3, 3)
        assert [bytes(v) for v in ring.recv_many(2)] == [b"1", b"2"]
        assert [bytes(v) for v in ring.recv_many(2)] == [b"3"]  # continues after unreleased
        assert ring.stats().occupancy == 3  # nothing freed before release()
        ring.release()
        assert ring.stats().released == 3
        assert ring.free_slots() == 3
        assert ring.send_many([b"7", b"8", b"9"]) == 3  # wraps around
        assert [bytes(v) for v in ring.recv_many()] == [b"7", b"8", b"9"]
        ring.release()


def test_recv_many_accepts_memoryview_packets_and_returns_zero_copy_views(name: str) -> None:
    with Ring.create(name, slots=2, slot_size=16) as ring:
        src = bytearray(b"0123456789")
        assert ring.send(memoryview(src)[2:6])
        (view,) = ring.recv_many()
        assert view.readonly is False and bytes(view) == b"2345"
        del view
        ring.release()


def test_close_with_live_views_is_a_clear_error(name: str) -> None:
    ring = Ring.create(name, slots=2, slot_size=16)
    ring.send(b"x")
    views = ring.recv_many()
    with pytest.raises(BufferError, match="still referenced"):
        ring.close()
    del views


def _readable(fd: int) -> bool:
    return bool(select.select([fd], [], [], 0)[0])


def test_wakeups_only_when_the_peer_sleeps(name: str) -> None:
    with Ring.create(name, slots=4, slot_size=8) as ring:
        ring.send(b"a")
        ring.send(b"a2")
        assert not _readable(ring.consumer_fd())  # consumer not asleep: no eventfd write
        got = ring.recv_many(1)
        assert len(got) == 1
        assert not ring.consumer_arm()  # a packet not yet received is pending: must not sleep
        del got
        got = ring.recv_many()
        assert [bytes(v) for v in got] == [b"a2"]
        del got
        ring.release()
        assert ring.consumer_arm()
        ring.send(b"b")
        assert _readable(ring.consumer_fd())
        ring.consumer_disarm()
        assert not _readable(ring.consumer_fd())
        ring.send_many([b"c", b"d", b"e"])
        assert not ring.send_ready() and ring.producer_arm()
        got = ring.recv_many(1)
        assert len(got) == 1
        assert not _readable(ring.producer_fd())
        del got
        ring.release()
        assert _readable(ring.producer_fd())
        ring.producer_disarm()
        stats = ring.stats()
        assert (stats.consumer_wakeups, stats.producer_wakeups) == (1, 1)
        assert (stats.consumer_sleeps, stats.producer_sleeps) == (1, 1)


def test_restarted_children_continue_the_ring(name: str) -> None:
    with Ring.create(name, slots=16, slot_size=16) as ring:

        def produce(first: int) -> None:
            for i in range(first, first + 10):
                assert ring.send(i.to_bytes(4, "little"))

        def consume_and_die() -> None:
            assert len(ring.recv_many(4)) == 4
            ring.release()
            assert len(ring.recv_many(3)) == 3  # received, never released: redelivered

        for body in (lambda: produce(0), consume_and_die, lambda: produce(10)):
            assert wait_child(fork_child(body), 30) == 0
        got = [int.from_bytes(v, "little") for v in ring.recv_many(100)]
        assert got == list(range(4, 20))
        ring.release()


def test_arm_all_sleeps_only_when_no_ring_has_work() -> None:
    with (
        Ring.create("inbox", slots=2, slot_size=8) as inbox,
        Ring.create("outbox", slots=1, slot_size=8) as outbox,
    ):
        outbox.send(b"x")  # full: the process waits for room here and data on inbox
        assert arm_all(consumers=[inbox], producers=[outbox])
        inbox.send(b"y")
        assert _readable(inbox.consumer_fd())
        disarm_all(consumers=[inbox], producers=[outbox])
        assert not _readable(inbox.consumer_fd())
        assert not arm_all(consumers=[inbox], producers=[outbox])  # inbox has data
        inbox.send(b"z")
        assert not _readable(inbox.consumer_fd())  # arm_all disarmed everything


def test_messages_longer_than_a_slot_span_consecutive_slots(name: str) -> None:
    with Ring.create(name, slots=10, slot_size=64) as ring:
        big = bytes(range(256)) * 2  # 512 bytes: 8 slots
        assert ring.slots_for(len(big)) == 8
        assert ring.slots_for(64) == 1
        assert ring.fits(len(big))
        assert ring.send_many([b"a", big]) == 2
        assert ring.free_slots() == 1
        assert not ring.fits(65)  # needs 2 slots, 1 free
        assert ring.fits(64)
        views = ring.recv_many()
        assert [bytes(v) for v in views] == [b"a", big]
        assert views[1].obj is views[0].obj  # contiguous: a view into the ring, no copy
        del views
        ring.release()
        stats = ring.stats()
        assert (stats.packets, stats.released, stats.occupancy, stats.high_water) == (2, 2, 0, 9)
        # Head is at slot 9 now: a 3-slot message wraps and comes back as one copy.
        wrapped = bytes(range(150))
        assert ring.send(wrapped)
        assert ring.send(b"after")
        views = ring.recv_many()
        assert [bytes(v) for v in views] == [wrapped, b"after"]
        assert views[0].obj is not views[1].obj
        del views
        ring.release()


def test_a_message_waits_until_all_its_slots_are_free(name: str) -> None:
    with Ring.create(name, slots=4, slot_size=64) as ring:
        assert ring.send_many([b"1", b"2", b"3"]) == 3
        assert not ring.send(bytes(128))  # needs 2 slots, 1 free: refused whole
        assert ring.send_many([bytes(128), b"4"]) == 0  # order kept: "4" may not overtake
        assert ring.stats().full_events == 2
        assert ring.producer_arm(need=2)  # sleep: only 1 slot free
        views = ring.recv_many(1)
        del views
        ring.release()  # frees 1: the producer is woken and finds 2 free
        assert _readable(ring.producer_fd())
        ring.producer_disarm()
        assert not ring.producer_arm(need=2)
        assert ring.send(bytes(128))
        assert ring.wait_space(timeout=0.01, nbytes=64) is False  # full
        got = [bytes(v) for v in ring.recv_many()]
        assert got == [b"2", b"3", bytes(128)]
        ring.release()
        assert ring.wait_space(timeout=0.01, nbytes=256)


def test_a_producer_killed_mid_message_publishes_nothing_half_written(name: str) -> None:
    """Only whole messages are ever visible: each carries its own length and checksum."""
    with Ring.create(name, slots=64, slot_size=128) as ring:

        def produce() -> None:
            i = 0
            while True:
                n = 64 + (i * 997) % 4000
                body = bytes((i + k) % 256 for k in range(n - 2))
                if ring.wait_space(nbytes=n):
                    ring.send(bytes([sum(body) % 256, n % 256]) + body)
                i += 1

        pid = fork_child(produce)
        received = 0
        try:
            while received < 200:
                if ring.wait_data(timeout=30):
                    for message in [bytes(v) for v in ring.recv_many()]:
                        assert _intact(message)
                        received += 1
                    ring.release()
        finally:
            kill_child(pid)  # SIGKILL, most likely in the middle of copying a message
        assert all(_intact(bytes(v)) for v in ring.recv_many(1000))
        ring.release()


def _intact(message: bytes) -> bool:
    return message[0] == sum(message[2:]) % 256 and message[1] == len(message) % 256
