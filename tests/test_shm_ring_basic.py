"""shm_ring API: geometry and packet validation, full/empty, stats, attach, restart, cleanup."""

from __future__ import annotations

import os
import select
import subprocess
import sys
from collections.abc import Iterator

import pytest

from shm_ring import (
    MAX_SLOT_SIZE,
    MAX_SLOTS,
    Ring,
    arm_all,
    cleanup_stale,
    disarm_all,
    read_stats,
    remove_if_stale,
)
from tests.ring_helpers import fork_child, unique_ring_name, unlink_quietly, wait_child


@pytest.fixture
def name() -> Iterator[str]:
    n = unique_ring_name()
    try:
        yield n
    finally:
        unlink_quietly(n)


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
    assert not os.path.exists(f"/dev/shm/{name}")


@pytest.mark.parametrize("bad", ["", "a/b", "x" * 300])
def test_bad_names_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="ring name"):
        Ring.create(bad)


def test_defaults_and_mtu_sized_geometries(name: str) -> None:
    with Ring.create(name) as ring:
        assert (ring.slots, ring.slot_size) == (1000, 1280)
    for slot_size in (1420 + 20, 9000 + 20):
        with Ring.create(name, slot_size=slot_size) as ring:
            size = os.path.getsize(f"/dev/shm/{name}")
            assert ring.send(bytes(slot_size))
            # Fixed slots of the MTU size, not 65535: at most one cache line of padding each.
            assert size < 1000 * (slot_size + 64) + 8192


def test_oversized_and_empty_packets_raise_without_corruption(name: str) -> None:
    with Ring.create(name, slots=4, slot_size=100) as ring:
        assert ring.send(b"first")
        with pytest.raises(ValueError, match=r"101 bytes.*1\.\.100"):
            ring.send(bytes(101))
        with pytest.raises(ValueError, match=r"0 bytes.*1\.\.100"):
            ring.send(b"")
        with pytest.raises(ValueError, match=r"packet 1 of 200 bytes"):
            ring.send_many([b"second", bytes(200), b"never"])
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
        assert read_stats(name) == stats  # what the metrics endpoint sees, without the Ring
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
    ring.unlink()


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


def test_attach_by_name_shares_data_and_eventfds(name: str) -> None:
    with Ring.create(name, slots=8, slot_size=32) as owner:
        peer = Ring.attach(name)
        try:
            assert owner.consumer_arm()
            assert peer.send(b"via attach")
            assert _readable(owner.consumer_fd())
            assert [bytes(v) for v in owner.recv_many()] == [b"via attach"]
            owner.release()
            assert peer.stats().released == 1
        finally:
            peer.close()


def test_attach_refuses_non_ring_segments(name: str) -> None:
    with open(f"/dev/shm/{name}", "wb") as f:
        f.write(bytes(4096))
    with pytest.raises(ValueError, match="not a version-1 shm_ring"):
        Ring.attach(name, data_fd=-1, space_fd=-1)
    with pytest.raises(ValueError, match="not a version-1 shm_ring"):
        read_stats(name)


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
        assert os.path.exists(f"/dev/shm/{name}")  # children's exits never unlink


def test_stale_segments_of_this_instance_are_removed_and_live_ones_kept() -> None:
    prefix = unique_ring_name("stale") + "-"
    crashed, live, foreign = prefix + "crashed", prefix + "live", unique_ring_name("other")
    not_a_ring = prefix + "plainfile"
    try:
        # A creator that dies without unlinking leaves a stale segment.
        pid = fork_child(lambda: Ring.create(crashed, slots=2, slot_size=8) and None)
        assert wait_child(pid, 30) == 0
        pid = fork_child(lambda: Ring.create(foreign, slots=2, slot_size=8) and None)
        assert wait_child(pid, 30) == 0
        with open(f"/dev/shm/{not_a_ring}", "wb") as f:
            f.write(bytes(1024))
        with Ring.create(live, slots=2, slot_size=8):
            with pytest.raises(FileExistsError, match="creator is alive"):
                Ring.create(live, slots=2, slot_size=8)
            assert not remove_if_stale(live)
            assert cleanup_stale(prefix) == [crashed]
            for kept in (live, foreign, not_a_ring):
                assert os.path.exists(f"/dev/shm/{kept}")
        # A new start may also simply re-create over a stale name.
        with Ring.create(foreign, slots=2, slot_size=8) as again:
            assert again.stats().packets == 0
    finally:
        for n in (crashed, live, foreign, not_a_ring):
            unlink_quietly(n)


def test_arm_all_sleeps_only_when_no_ring_has_work() -> None:
    names = [unique_ring_name("arm") for _ in range(2)]
    try:
        with (
            Ring.create(names[0], slots=2, slot_size=8) as inbox,
            Ring.create(names[1], slots=1, slot_size=8) as outbox,
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
    finally:
        for n in names:
            unlink_quietly(n)


def test_unrelated_process_attaches_by_name_and_wakes_the_owner(name: str) -> None:
    code = (
        "import sys; from shm_ring import Ring\n"
        "r = Ring.attach(sys.argv[1]); assert r.send(b'from afar'); r.close()\n"
    )
    with Ring.create(name, slots=4, slot_size=16) as ring:
        assert ring.consumer_arm()
        subprocess.run([sys.executable, "-c", code, name], check=True, timeout=60)
        assert _readable(ring.consumer_fd())
        ring.consumer_disarm()
        assert [bytes(v) for v in ring.recv_many()] == [b"from afar"]
        ring.release()
