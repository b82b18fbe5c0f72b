"""Byte layout of a ring's shared memory, and the one reader of its header.

Layout (one anonymous MAP_SHARED mapping, created by the supervisor before it forks)::

    header   3 cache lines of 64-bit words: geometry | producer-written | consumer-written
    lengths  `slots` x u32: the byte length of the message that starts in each slot
    data     `slots` x stride bytes, stride = slot_size rounded up to 64

Only `shm_ring.ring` writes this memory; this module owns the word numbers, the geometry
limits and `read_counters`, so no other module hard-codes an offset.
"""

from __future__ import annotations

from dataclasses import dataclass

MAGIC = 0x464A_5247_5249_4E47  # "FZGRRING"-ish, marks a complete header
VERSION = 2  # 2: messages may span several slots
MAX_SLOTS = 1 << 20
MAX_SLOT_SIZE = 65535
MAX_SEGMENT_BYTES = 1 << 30
CACHE_LINE = 64

# Header word indices (8-byte words). Line 0: immutable geometry.
W_MAGIC, W_VERSION, W_SLOTS, W_SLOT_SIZE, W_STRIDE = 0, 1, 2, 3, 4
# Producer-written line. HEAD counts slots, MESSAGES messages, SPANNING messages of 2+ slots.
W_HEAD, W_BYTES, W_FULL, W_HIGH = 16, 17, 18, 19
W_PRODUCER_WAITING, W_CONSUMER_WAKEUPS, W_PRODUCER_SLEEPS, W_MESSAGES = 20, 21, 22, 23
W_SPANNING = 24
# Consumer-written line. TAIL counts slots, RELEASED messages, SPANNING_RELEASED 2+ slot ones.
W_TAIL, W_CONSUMER_WAITING, W_PRODUCER_WAKEUPS, W_CONSUMER_SLEEPS = 32, 33, 34, 35
W_RELEASED, W_SPANNING_RELEASED = 36, 37
HEADER_BYTES = 48 * 8


@dataclass(frozen=True, slots=True)
class RingStats:
    """A snapshot of a ring's shared counters."""

    slots: int
    slot_size: int
    packets: int  # messages published by the producer, ever
    bytes: int
    released: int  # messages freed by the consumer, ever
    occupancy: int  # slots in use now (a message longer than the stride uses several)
    high_water: int  # most slots in use right after a publish
    full_events: int  # send/send_many calls that found no room for a message
    consumer_sleeps: int
    consumer_wakeups: int  # eventfd writes by the producer
    producer_sleeps: int
    producer_wakeups: int  # eventfd writes by the consumer


def round_up(n: int, to: int) -> int:
    return (n + to - 1) // to * to


def stride_for(slot_size: int) -> int:
    return round_up(slot_size, CACHE_LINE)


def data_offset(slots: int) -> int:
    return round_up(HEADER_BYTES + 4 * slots, CACHE_LINE)


def segment_size(slots: int, slot_size: int) -> int:
    """Validate geometry and return the mapping's size; errors name the limit."""
    if type(slots) is not int or not 1 <= slots <= MAX_SLOTS:
        raise ValueError(f"ring slots must be an int in 1..{MAX_SLOTS}, got {slots!r}")
    if type(slot_size) is not int or not 1 <= slot_size <= MAX_SLOT_SIZE:
        raise ValueError(f"ring slot_size must be an int in 1..{MAX_SLOT_SIZE}, got {slot_size!r}")
    size = data_offset(slots) + slots * stride_for(slot_size)
    if size > MAX_SEGMENT_BYTES:
        raise ValueError(
            f"ring of {slots} x {slot_size} bytes needs {size} bytes, "
            f"over the {MAX_SEGMENT_BYTES}-byte limit"
        )
    return size


def write_header(words: memoryview, slots: int, slot_size: int) -> None:
    """Fill line 0 of a zeroed header; the magic goes last and marks it complete."""
    words[W_SLOTS] = slots
    words[W_SLOT_SIZE] = slot_size
    words[W_STRIDE] = stride_for(slot_size)
    words[W_VERSION] = VERSION
    words[W_MAGIC] = MAGIC


def read_geometry(words: memoryview, size: int) -> tuple[int, int]:
    """(slots, slot_size) of a header, after checking it against the mapping's size."""
    if words[W_MAGIC] != MAGIC or words[W_VERSION] != VERSION:
        raise ValueError(f"not a version-{VERSION} shm_ring header")
    slots, slot_size = int(words[W_SLOTS]), int(words[W_SLOT_SIZE])
    if segment_size(slots, slot_size) != size or words[W_STRIDE] != stride_for(slot_size):
        raise ValueError(f"ring header ({slots} x {slot_size}) disagrees with its {size} bytes")
    return slots, slot_size


def read_counters(words: memoryview) -> RingStats:
    head, tail = words[W_HEAD], words[W_TAIL]
    return RingStats(
        slots=words[W_SLOTS],
        slot_size=words[W_SLOT_SIZE],
        packets=words[W_MESSAGES],
        bytes=words[W_BYTES],
        released=words[W_RELEASED],
        occupancy=head - tail,
        high_water=words[W_HIGH],
        full_events=words[W_FULL],
        consumer_sleeps=words[W_CONSUMER_SLEEPS],
        consumer_wakeups=words[W_CONSUMER_WAKEUPS],
        producer_sleeps=words[W_PRODUCER_SLEEPS],
        producer_wakeups=words[W_PRODUCER_WAKEUPS],
    )
