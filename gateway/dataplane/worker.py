"""A TUN worker: moves packets between one TUN queue and the crypto process's rings."""

from __future__ import annotations

import select

from gateway.dataplane.heartbeat import Heartbeat
from gateway.dataplane.sleeper import Sleeper
from gateway.telemetry import stats as st
from shm_ring.ring import Ring
from tunio.base import Tun

BATCH = 100  # packets per read from the TUN queue, as in the seed's recv_many


def run_worker(
    tun: Tun,
    to_crypto: Ring,
    from_crypto: Ring,
    counters: memoryview,
    heartbeat: Heartbeat | None = None,
) -> None:
    """Forever: TUN -> to_crypto (only while it has room), from_crypto -> TUN."""
    sleeper = Sleeper(consumers=[from_crypto], producers=[to_crypto], heartbeat=heartbeat)
    beat = sleeper.heartbeat.beat
    tun_fd = tun.fileno()
    limit = to_crypto.max_message  # a packet longer than a slot spans several
    c = counters
    while True:
        beat()
        busy = False
        room = to_crypto.free_slots()
        if room:
            # Never read more than fits: the rest waits in the kernel's queue (backpressure).
            packets = tun.recv_many(min(BATCH, room))
            if packets:
                busy = True
                sizes = list(map(len, packets))
                if max(sizes) > limit or min(sizes) == 0:
                    c[st.DROP_TOO_BIG] += sum(size > limit for size in sizes)
                    c[st.DROP_MALFORMED] += sizes.count(0)
                    packets = [p for p in packets if 0 < len(p) <= limit]
                    sizes = list(map(len, packets))
                taken = to_crypto.send_many(packets)
                c[st.TUN_RX_PACKETS] += taken
                c[st.TUN_RX_BYTES] += sum(sizes[:taken])
                if taken < len(packets):
                    c[st.DROP_RING_FULL] += len(packets) - taken
        incoming = from_crypto.recv_many(BATCH)
        if incoming:
            busy = True
            sent = tun.send_many(incoming)
            c[st.TUN_TX_PACKETS] += sent
            c[st.TUN_TX_BYTES] += sum(map(len, incoming))
            if sent < len(incoming):
                c[st.DROP_TUN_WRITE_FAILED] += len(incoming) - sent
            from_crypto.release()
        if busy:
            continue
        blocked = not to_crypto.send_ready()
        # While the ring to crypto is full, leave packets in the TUN queue (backpressure).
        sleeper.watch(tun_fd, 0 if blocked else select.EPOLLIN)
        sleeper.sleep([from_crypto], [to_crypto] if blocked else [])
