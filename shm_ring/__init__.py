"""Lock-free single-producer/single-consumer packet rings in shared memory.

See `shm_ring.ring` for the layout, the memory-ordering argument and the sleep/wake handshake.
"""

from shm_ring.ring import MAX_SLOT_SIZE, MAX_SLOTS, Ring, RingStats, arm_all, disarm_all
from shm_ring.stale import cleanup_stale, remove_if_stale

__all__ = [
    "MAX_SLOTS",
    "MAX_SLOT_SIZE",
    "Ring",
    "RingStats",
    "arm_all",
    "cleanup_stale",
    "disarm_all",
    "remove_if_stale",
]
