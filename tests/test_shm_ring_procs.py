"""shm_ring across processes: multi-million-packet stress (also with messages of mixed sizes
spanning and wrapping several slots), no lost wake-up, idle CPU."""

from __future__ import annotations

import os
import random
import select
import struct
import time
import zlib
from collections.abc import Iterator

import psutil
import pytest

from shm_ring import Ring
from tests.ring_helpers import fork_child, kill_child, unique_ring_name, wait_child

_HEAD = struct.Struct("<QI")  # sequence number, crc32 of the payload
_CLASSES = 4096  # packet length and payload repeat with period _CLASSES; seq never does


@pytest.fixture
def ring_names() -> Iterator[list[str]]:
    yield []  # labels only: rings have no name in the filesystem to clean up


def _new_ring(names: list[str], **geometry: int) -> Ring:
    names.append(unique_ring_name("proc"))
    return Ring.create(names[-1], **geometry)


def _wait(ring: Ring, *, consumer: bool, need: int = 1) -> None:
    """Sleep in epoll until the ring has data (consumer) or `need` free slots (producer)."""
    arm = ring.consumer_arm if consumer else lambda: ring.producer_arm(need)
    disarm = ring.consumer_disarm if consumer else ring.producer_disarm
    fd = ring.consumer_fd() if consumer else ring.producer_fd()
    ep = select.epoll()
    ep.register(fd, select.EPOLLIN)
    try:
        if arm():
            ep.poll()  # a lost wake-up blocks here forever; the parent's watchdog catches it
            disarm()
    finally:
        ep.close()


class _Packets:
    """Deterministic packets: a sequence number, a checksum and a random payload each."""

    def __init__(self, max_len: int, seed: int, *, big_len: int = 0) -> None:
        """Lengths 1..max_len, and with big_len a fifth of them max_len..big_len."""
        rng = random.Random(seed)
        self.lengths = [
            rng.randint(max_len, big_len) if big_len and rng.random() < 0.2 else
            rng.randint(1, max_len)
            for _ in range(_CLASSES)
        ]  # fmt: skip
        self.payloads = [rng.randbytes(max(0, n - _HEAD.size)) for n in self.lengths]
        self.crcs = [zlib.crc32(p) for p in self.payloads]

    def make(self, seq: int) -> bytes:
        c = seq % _CLASSES
        packet = _HEAD.pack(seq, self.crcs[c]) + self.payloads[c]
        return packet if len(packet) == self.lengths[c] else packet[: self.lengths[c]]

    def check(self, seq: int, view: memoryview) -> str | None:
        c = seq % _CLASSES
        if len(view) != self.lengths[c]:
            return f"packet {seq}: length {len(view)} != {self.lengths[c]}"
        if len(view) < _HEAD.size:  # shorter than the header: a prefix of it
            return None if view == self.make(seq) else f"packet {seq}: short packet differs"
        got_seq, crc = _HEAD.unpack_from(view)
        if got_seq != seq:
            return f"expected packet {seq}, got {got_seq} (loss, duplicate or reorder)"
        if crc != self.crcs[c] or zlib.crc32(view[_HEAD.size :]) != crc:
            return f"packet {seq}: checksum mismatch (corruption)"
        return None


def _produce(ring: Ring, packets: _Packets, total: int, seed: int) -> None:
    rng = random.Random(seed)
    seq = 0
    while seq < total:
        if rng.random() < 0.002:
            time.sleep(rng.random() * 0.003)  # random pause: the consumer drains and sleeps
        batch = [packets.make(s) for s in range(seq, min(total, seq + rng.randint(1, 100)))]
        while batch:
            taken = ring.send_many(batch) if len(batch) > 1 else int(ring.send(batch[0]))
            seq += taken
            batch = batch[taken:]
            if batch:
                _wait(ring, consumer=False, need=ring.slots_for(len(batch[0])))


def _consume(ring: Ring, packets: _Packets, total: int, seed: int) -> None:
    rng = random.Random(seed)
    seq = 0
    while seq < total:
        if rng.random() < 0.002:
            time.sleep(rng.random() * 0.003)  # random pause: the ring fills, the producer sleeps
        views = ring.recv_many(rng.randint(1, 100))
        if not views:
            _wait(ring, consumer=True)
            continue
        for view in views:
            error = packets.check(seq, view)
            if error:
                raise AssertionError(error)
            seq += 1
        del views, view
        ring.release()
    leftover = ring.recv_many()
    if leftover:
        raise AssertionError(f"{len(leftover)} packets after the last one (duplicates)")


@pytest.mark.slow
def test_two_process_stress_millions_of_packets(ring_names: list[str]) -> None:
    total = int(os.environ.get("SHM_RING_STRESS_PACKETS", "5000000"))
    ring = _new_ring(ring_names, slots=1000, slot_size=1280)
    packets = _Packets(1280, seed=7)
    try:
        producer = fork_child(lambda: _produce(ring, packets, total, seed=1))
        consumer = fork_child(lambda: _consume(ring, packets, total, seed=2))
        codes = wait_child(consumer, 600), wait_child(producer, 60)
        assert codes == (0, 0), f"exit codes (consumer, producer) {codes}: None means stuck"
        stats = ring.stats()
        assert (stats.packets, stats.released, stats.occupancy) == (total, total, 0)
        assert stats.high_water == 1000 and stats.full_events > 0
        # Both sleep paths ran, and wake-ups are far rarer than packets.
        assert stats.consumer_sleeps > 0 and stats.producer_sleeps > 0
        assert stats.consumer_wakeups + stats.producer_wakeups < total // 10
    finally:
        ring.close()


@pytest.mark.slow
def test_two_process_stress_mixed_sizes_spanning_and_wrapping(ring_names: list[str]) -> None:
    """Messages up to 64 KiB through a ring of 200 x 1280 bytes: most take one slot, a fifth
    take up to 52 and many of those wrap around the ring's end."""
    total = int(os.environ.get("SHM_RING_STRESS_MIXED", "300000"))
    ring = _new_ring(ring_names, slots=200, slot_size=1280)
    packets = _Packets(1280, seed=11, big_len=65535)
    try:
        producer = fork_child(lambda: _produce(ring, packets, total, seed=5))
        consumer = fork_child(lambda: _consume(ring, packets, total, seed=6))
        codes = wait_child(consumer, 600), wait_child(producer, 60)
        assert codes == (0, 0), f"exit codes (consumer, producer) {codes}: None means stuck"
        stats = ring.stats()
        assert (stats.packets, stats.released, stats.occupancy) == (total, total, 0)
        assert stats.bytes == sum(packets.lengths[s % _CLASSES] for s in range(total))
        assert stats.full_events > 0 and stats.producer_sleeps > 0
    finally:
        ring.close()


def _echo(requests: Ring, replies: Ring, seed: int) -> None:
    rng = random.Random(seed)
    while True:
        views = requests.recv_many(1)
        if not views:
            _wait(requests, consumer=True)
            continue
        value = bytes(views[0])
        del views
        requests.release()
        if rng.random() < 0.5:
            for _ in range(rng.randint(0, 300)):  # spin a few microseconds: vary the race
                pass
        while not replies.send(value):
            _wait(replies, consumer=False)


def _ping_pong(rounds: int, *, timeout: float, ring_names: list[str], break_wakeups: bool) -> str:
    """Ping-pong where each side usually sleeps just as the other publishes; '' if no loss."""
    requests = _new_ring(ring_names, slots=1, slot_size=8)
    replies = _new_ring(ring_names, slots=1, slot_size=8)

    def child() -> None:
        if break_wakeups:  # the failure this test must detect: a producer that never wakes
            requests._wake = replies._wake = lambda fd, counter: None  # type: ignore[method-assign]  # break wake-ups on purpose
        _echo(requests, replies, seed=3)

    pid = fork_child(child)
    rng = random.Random(4)
    try:
        for i in range(rounds):
            if rng.random() < 0.5:
                for _ in range(rng.randint(0, 300)):
                    pass
            while not requests.send(i.to_bytes(8, "little")):
                if not requests.wait_space(timeout):
                    return f"round {i}: producer never woken for room"
            while not (views := replies.recv_many(1)):
                if not replies.wait_data(timeout):
                    lost = bool(replies.recv_many(1))
                    return f"round {i}: {'lost wake-up' if lost else 'no reply'} after {timeout}s"
            got = int.from_bytes(views[0], "little")
            del views
            replies.release()
            if got != i:
                return f"round {i}: reply {got}"
        return ""
    finally:
        kill_child(pid)
        requests.close()
        replies.close()


def test_no_lost_wakeup_under_random_timing(ring_names: list[str]) -> None:
    error = _ping_pong(20000, timeout=20.0, ring_names=ring_names, break_wakeups=False)
    assert error == ""


def test_ping_pong_detects_missing_wakeups(ring_names: list[str]) -> None:
    error = _ping_pong(50, timeout=0.5, ring_names=ring_names, break_wakeups=True)
    assert "after 0.5s" in error


def test_idle_pair_uses_no_cpu(ring_names: list[str]) -> None:
    full = _new_ring(ring_names, slots=4, slot_size=8)
    empty = _new_ring(ring_names, slots=4, slot_size=8)
    ready_r, ready_w = os.pipe()

    def producer() -> None:  # blocks on a full ring
        while full.send(b"fill"):
            pass
        os.write(ready_w, b"p")
        _wait(full, consumer=False)
        assert full.send(b"after")

    def consumer() -> None:  # blocks on an empty ring
        os.write(ready_w, b"c")
        _wait(empty, consumer=True)
        assert [bytes(v) for v in empty.recv_many()] == [b"wake"]

    pids = [fork_child(producer), fork_child(consumer)]
    try:
        assert sorted(os.read(ready_r, 1) + os.read(ready_r, 1)) == sorted(b"pc")
        procs = [psutil.Process(pid) for pid in pids]
        time.sleep(0.2)  # let both reach epoll_wait
        before = [sum(p.cpu_times()[:2]) for p in procs]
        time.sleep(2.0)
        cpu = sum(sum(p.cpu_times()[:2]) for p in procs) - sum(before)
        assert cpu < 0.02 * 2.0, f"idle pair used {cpu:.3f} s CPU in 2 s"
        # The sleepers must still wake up: free room for the producer, send to the consumer.
        assert len(full.recv_many(1)) == 1
        full.release()
        assert empty.send(b"wake")
        assert [wait_child(pid, 30) for pid in pids] == [0, 0]
    finally:
        for pid in pids:
            kill_child(pid)
        os.close(ready_r)
        os.close(ready_w)
        full.close()
        empty.close()
