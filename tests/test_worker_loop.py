"""The TUN worker's loop, turned by hand on a FakeTun and in-memory rings (no root)."""

from __future__ import annotations

from gateway.dataplane.worker import BATCH, WorkerLoop
from gateway.telemetry import stats as st
from tests.dataplane_fakes import MemoryRing, counter_block
from tunio.fake import FakeTun

PACKET = bytes([0x45]) + bytes(59)  # an IPv4 packet as far as the TUN cares


def _worker(slots: int = 64, slot_size: int = 1600) -> tuple[WorkerLoop[MemoryRing], FakeTun]:
    tun = FakeTun()
    to_crypto, from_crypto = MemoryRing(slots, slot_size), MemoryRing(slots, slot_size)
    return WorkerLoop(tun, to_crypto, from_crypto, counter_block()), tun


def test_packets_cross_both_ways_and_are_counted() -> None:
    loop, tun = _worker()
    for i in range(3):
        tun.inject(PACKET[:-1] + bytes([i]))
    loop.from_crypto.send_many([PACKET, PACKET])
    assert loop.turn()
    assert loop.to_crypto.drain() == [PACKET[:-1] + bytes([i]) for i in range(3)]
    assert tun.take_sent() == [PACKET, PACKET]
    c = loop.counters
    assert (c[st.TUN_RX_PACKETS], c[st.TUN_RX_BYTES]) == (3, 3 * len(PACKET))
    assert (c[st.TUN_TX_PACKETS], c[st.TUN_TX_BYTES]) == (2, 2 * len(PACKET))
    assert not loop.turn()  # nothing left: the caller may sleep


def test_reads_no_more_than_the_ring_takes_and_the_rest_waits_in_the_tun() -> None:
    loop, tun = _worker(slots=4)
    for _ in range(10):
        tun.inject(PACKET)
    assert loop.turn()
    assert len(loop.to_crypto) == 4
    assert loop.inbound_blocked()
    assert not loop.turn()  # a full ring: nothing read, nothing dropped
    assert loop.counters[st.DROP_RING_FULL] == 0
    loop.to_crypto.drain()
    assert not loop.inbound_blocked()
    assert loop.turn()
    assert len(loop.to_crypto) == 4
    assert loop.counters[st.TUN_RX_PACKETS] == 8


def test_a_turn_reads_at_most_one_batch() -> None:
    loop, tun = _worker(slots=4 * BATCH)
    for _ in range(BATCH + 1):
        tun.inject(PACKET)
    loop.turn()
    assert len(loop.to_crypto) == BATCH
    loop.turn()
    assert len(loop.to_crypto) == BATCH + 1


def test_empty_and_too_big_packets_are_dropped_and_counted() -> None:
    loop, tun = _worker(slot_size=100)
    tun.inject(PACKET)
    tun.inject(b"")
    tun.inject(bytes([0x45]) + bytes(100))  # one byte over the slot
    tun.inject(PACKET)
    assert loop.turn()
    assert loop.to_crypto.drain() == [PACKET, PACKET]
    c = loop.counters
    assert (c[st.DROP_MALFORMED], c[st.DROP_TOO_BIG], c[st.TUN_RX_PACKETS]) == (1, 1, 2)
    assert c[st.TUN_RX_BYTES] == 2 * len(PACKET)


def test_packets_the_tun_refuses_are_counted_and_their_slots_released() -> None:
    loop, tun = _worker(slots=4)
    not_ip = bytes([0x10]) + bytes(20)
    loop.from_crypto.send_many([not_ip, PACKET, not_ip, PACKET])
    assert loop.turn()
    assert tun.take_sent() == [PACKET, PACKET]
    c = loop.counters
    assert (c[st.TUN_TX_PACKETS], c[st.DROP_TUN_WRITE_FAILED]) == (2, 2)
    assert loop.from_crypto.free_slots() == 4
