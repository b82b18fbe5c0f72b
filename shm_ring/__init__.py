"""Lock-free single-producer/single-consumer packet rings in shared memory.

See `shm_ring.ring` for the layout, the memory-ordering argument and the sleep/wake handshake.
Typical use (the supervisor creates, forks, and each child uses the inherited object)::

    ring = Ring.create("fzgw-<instance>-w0-crypto")     # supervisor; ring.unlink() at stop
    # consumer child
    while True:
        packets = ring.recv_many(100)                   # zero-copy views
        if packets:
            handle(packets); del packets; ring.release()
        elif ring.consumer_arm():                       # still empty: sleep until woken
            epoll.poll()                                # with ring.consumer_fd() registered
            ring.consumer_disarm()
    # producer child: taken = ring.send_many(batch); if short: producer_arm() / producer_fd()
"""

from shm_ring.ring import (
    MAX_SLOT_SIZE,
    MAX_SLOTS,
    Ring,
    RingStats,
    arm_all,
    disarm_all,
    read_stats,
)
from shm_ring.stale import cleanup_stale, remove_if_stale

__all__ = [
    "MAX_SLOTS",
    "MAX_SLOT_SIZE",
    "Ring",
    "RingStats",
    "arm_all",
    "cleanup_stale",
    "disarm_all",
    "read_stats",
    "remove_if_stale",
]
