"""Lock-free single-producer/single-consumer message rings in anonymous shared memory.

See `shm_ring.ring` for the memory-ordering argument and the sleep/wake handshake, and
`shm_ring.layout` for the byte layout. Typical use (the supervisor creates, forks, and each
child uses the inherited object; the memory has no name and dies with the last process)::

    ring = Ring.create("w0-crypto")                     # supervisor, before fork
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

from shm_ring.layout import MAX_SLOT_SIZE, MAX_SLOTS, RingStats
from shm_ring.ring import Ring, arm_all, disarm_all

__all__ = [
    "MAX_SLOTS",
    "MAX_SLOT_SIZE",
    "Ring",
    "RingStats",
    "arm_all",
    "disarm_all",
]
