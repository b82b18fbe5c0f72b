"""A TUN worker: moves packets between one TUN queue and the crypto process's rings.

`WorkerLoop.turn` is that work, one pass that never waits, on any `Tun` and any rings with
the `PacketRing` methods (tests drive it with tunio.fake.FakeTun and in-memory rings);
`run_worker` only turns it and sleeps in epoll. While the ring to the crypto process is full
the worker stops watching the TUN fd, so the kernel's queue absorbs or drops at the edge
(backpressure, no busy loop).
"""

from __future__ import annotations

import select
from typing import Generic

from gateway.dataplane.heartbeat import Heartbeat
from gateway.dataplane.rings import RingT
from gateway.dataplane.sleeper import Sleeper
from gateway.telemetry import stats as st
from shm_ring.ring import Ring
from tunio.base import Tun

BATCH = 100  # packets per read from the TUN queue, as in the seed's recv_many


class WorkerLoop(Generic[RingT]):
    """One TUN queue and its two rings, one turn at a time."""

    def __init__(self, tun: Tun, to_crypto: RingT, from_crypto: RingT, counters: memoryview):
        self.tun = tun
        self.to_crypto = to_crypto
        self.from_crypto = from_crypto
        self.counters = counters
        self._limit = to_crypto.max_message  # a packet longer than a slot spans several

    def turn(self) -> bool:
        """TUN -> to_crypto (only as much as it has room for), from_crypto -> TUN; True if
        any packet moved either way (then more may wait)."""
        read = self._read_tun()
        written = self._write_tun()
        return read or written

    def inbound_blocked(self) -> bool:
        """Whether the ring to the crypto process is full (then leave the TUN fd alone)."""
        return not self.to_crypto.send_ready()

    def _read_tun(self) -> bool:
        room = self.to_crypto.free_slots()
        if not room:
            return False
        # Never read more than fits: the rest waits in the kernel's queue (backpressure).
        packets = self.tun.recv_many(min(BATCH, room))
        if not packets:
            return False
        c, limit = self.counters, self._limit
        sizes = list(map(len, packets))
        if max(sizes) > limit or min(sizes) == 0:
            c[st.DROP_TOO_BIG] += sum(size > limit for size in sizes)
            c[st.DROP_MALFORMED] += sizes.count(0)
            packets = [p for p in packets if 0 < len(p) <= limit]
            sizes = list(map(len, packets))
        taken = self.to_crypto.send_many(packets)
        c[st.TUN_RX_PACKETS] += taken
        c[st.TUN_RX_BYTES] += sum(sizes[:taken])
        if taken < len(packets):
            c[st.DROP_RING_FULL] += len(packets) - taken
        return True

    def _write_tun(self) -> bool:
        incoming = self.from_crypto.recv_many(BATCH)
        if not incoming:
            return False
        c = self.counters
        sent = self.tun.send_many(incoming)
        c[st.TUN_TX_PACKETS] += sent
        c[st.TUN_TX_BYTES] += sum(map(len, incoming))
        if sent < len(incoming):
            c[st.DROP_TUN_WRITE_FAILED] += len(incoming) - sent
        self.from_crypto.release()
        return True


def run_worker(
    tun: Tun,
    to_crypto: Ring,
    from_crypto: Ring,
    counters: memoryview,
    heartbeat: Heartbeat | None = None,
) -> None:
    """Forever: turn the loop while it finds work, else sleep in epoll on the TUN fd (unless
    the ring to crypto is full) and the rings."""
    loop = WorkerLoop(tun, to_crypto, from_crypto, counters)
    sleeper = Sleeper(consumers=[from_crypto], producers=[to_crypto], heartbeat=heartbeat)
    beat = sleeper.heartbeat.beat
    tun_fd = tun.fileno()
    turn = loop.turn
    while True:
        beat()
        if turn():
            continue
        blocked = loop.inbound_blocked()
        sleeper.watch(tun_fd, 0 if blocked else select.EPOLLIN)
        sleeper.sleep([from_crypto], [to_crypto] if blocked else [])
