"""Single-producer/single-consumer message ring in anonymous shared memory, eventfd wake-ups.

Layout: see `shm_ring.layout` (header | u32 lengths | slots of `stride` bytes). The memory is
an anonymous MAP_SHARED mapping: it has no name, so no other process can open, plant or
forge it, and nothing is left behind when the gateway dies (the kernel frees it with the
last process that maps it).

Messages. `head` (slots ever published, written only by the producer) and `tail` (slots ever
released, written only by the consumer) are free-running 64-bit counters; slot = index % slots
and occupancy = head - tail, so they never wrap in practice. Every shared word has exactly one
writer. A message of n bytes takes k = ceil(n / stride) consecutive slots (1 for anything up to
the slot size, so the common packet costs what it always did) and its length is stored in the
first slot's entry; the others are not read. Its bytes are contiguous from the first slot's
offset, except when the k slots wrap past the end of the ring: then the tail part continues at
slot 0. `recv_many` returns a zero-copy view for a contiguous message and one copy for a
wrapped one. The producer needs all k slots free before it writes anything, and publishes by
storing `head` after the whole message, so a half-written message is never visible. It also
counts messages of 2+ slots (`spanning`, stored before `head`); the consumer loads `head`,
then `spanning`, and while that equals what it has consumed, every slot below `head` is a
message of its own and a batch is sliced at once (the fast path, as fast as one-slot rings
were). Otherwise it walks message by message (a stale, too-high count only costs the walk). The
geometry stays the user's (1000 x 1280 bytes by default) while a message may be as long as
the whole ring (`max_message`), enough for a 65535-byte packet.

Ownership: the supervisor creates every ring before it forks, and the children use the
inherited `Ring` object and eventfds. A restarted child is forked again from the supervisor's
object: the ring state lives entirely in shared memory (each call re-reads head/tail), so it
continues where its predecessor stopped; messages a dead consumer had received but not
released are delivered again, and a message a dead producer had not published is not there.

Memory ordering. Indices are aligned 8-byte words accessed through `memoryview.cast('Q')`,
i.e. one 8-byte mov each (single-copy atomic on x86-64 and aarch64 when aligned). Publishing:

* the producer copies the packet and its length into the slot, then stores `head`; the consumer
  loads `head`, then reads the slots below it. On x86-64 (TSO) stores become visible in program
  order and loads are not reordered with older loads, so a consumer that sees the new `head`
  sees the data; the interpreter keeps the C-level program order (each access is a separate
  opaque call). Releasing is symmetric: the consumer is done reading before it stores `tail`,
  and x86 never reorders a load with a later store.
* aarch64 is weakly ordered: it would need a store-release (STLR, or DMB ISH before the store)
  for `head`/`tail` and a load-acquire (LDAR, or DMB ISHLD after the load) when reading the
  peer's index -- e.g. libatomic's __atomic_store_8/__atomic_load_8 via ctypes, or a tiny C
  extension. Pure-Python plain stores give neither, so `Ring` refuses to run off x86-64.

Sleep/wake handshake (the Dekker pattern). A consumer that finds the ring empty calls
`consumer_arm()`: store `consumer_waiting = 1`, full barrier, re-load `head`; it sleeps in epoll
only if the ring is still empty. The producer, after storing `head`, loads `consumer_waiting`
and writes the eventfd if it is set. Without a barrier on both sides, x86 may reorder each
side's store after its later load (store buffer), and both could miss the other: a lost
wake-up. We use an *asymmetric* barrier: the sleeper calls membarrier(2)
(MEMBARRIER_CMD_GLOBAL_EXPEDITED, ~6 us, only when going to sleep), which forces a full barrier
on every CPU running a registered process, so the producer's hot path needs no fence at all.
Proof sketch: the barrier on the producer's CPU happens at some point P of its instruction
stream. If P is before the producer's store of `head`, the consumer's flag store is globally
visible before that store, so the producer's later load sees the flag and wakes. If P is after
the producer's load of the flag, the store of `head` is globally visible before the membarrier
returns, so the consumer's re-check sees the data and does not sleep. If P is between the store
and the load, both hold. The same handshake, mirrored, wakes a producer waiting for room
(`producer_arm()` / `release()`). Only the waiter clears its own flag (`*_disarm()`), so no
stale clear from the peer can un-arm a fresh sleep. No timeout is needed as a safety net.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import platform
import select
import time
from array import array
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Self

from shm_ring import _barrier
from shm_ring import layout as L
from shm_ring.layout import MAX_SLOT_SIZE, MAX_SLOTS, RingStats

__all__ = ["MAX_SLOTS", "MAX_SLOT_SIZE", "Ring", "RingStats", "arm_all", "disarm_all"]


def _check_arch() -> None:
    if platform.machine() != "x86_64":
        raise RuntimeError(
            f"shm_ring relies on x86-64 store ordering; {platform.machine()} needs "
            "release/acquire index accesses (see the shm_ring.ring docstring)"
        )


class Ring:
    """One SPSC message ring. Exactly one process produces and one consumes at a time."""

    def __init__(self, name: str, mm: mmap.mmap, *, data_fd: int, space_fd: int) -> None:
        self.name = name  # a label for messages and logs; the memory itself has no name
        self._mm = mm
        self._buf = memoryview(mm)
        self._idx = self._buf[: L.HEADER_BYTES].cast("Q")
        try:
            self.slots, self.slot_size = L.read_geometry(self._idx, len(mm))
        except ValueError:
            self._release_views()
            raise
        self._stride: int = L.stride_for(self.slot_size)
        self.max_message: int = self.slots * self._stride  # one message may fill the ring
        data_off = L.data_offset(self.slots)
        self._data_off = data_off
        self._lens = self._buf[L.HEADER_BYTES : L.HEADER_BYTES + 4 * self.slots].cast("I")
        self._offsets = [data_off + i * self._stride for i in range(self.slots)]
        self._offsets2 = self._offsets * 2  # a batch that wraps is one slice of this
        self._data_fd = data_fd
        self._space_fd = space_fd
        self._pending = 0  # slots of the messages returned by recv_many and not yet released
        self._pending_messages = 0
        self._pending_spanning = 0  # of those, messages of 2+ slots
        self._closed = False

    # ----------------------------------------------------------------- lifecycle

    @classmethod
    def create(cls, name: str, *, slots: int = 1000, slot_size: int = 1280) -> Ring:
        """Map a new ring and make its two eventfds; processes forked afterwards share it."""
        _check_arch()
        if not isinstance(name, str) or not name:
            raise ValueError(f"ring name must be a non-empty string, got {name!r}")
        size = L.segment_size(slots, slot_size)
        _barrier.register()
        mm = mmap.mmap(-1, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        data_fd = space_fd = -1
        try:
            data_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            space_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            with memoryview(mm) as view, view[: L.HEADER_BYTES].cast("Q") as words:
                L.write_header(words, slots, slot_size)
            return cls(name, mm, data_fd=data_fd, space_fd=space_fd)
        except BaseException:
            for efd in (data_fd, space_fd):
                if efd >= 0:
                    os.close(efd)
            mm.close()
            raise

    def close(self) -> None:
        """Unmap this process's view and close the eventfds (recv_many views become invalid)."""
        if self._closed:
            return
        self._closed = True
        for fd in (self._data_fd, self._space_fd):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._release_views()
        try:
            self._mm.close()
        except BufferError as exc:
            # The mapping stays until those views are garbage-collected; nothing else leaks.
            raise BufferError(
                f"ring {self.name!r}: packets from recv_many are still referenced"
            ) from exc

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _release_views(self) -> None:
        for name in ("_lens", "_idx", "_buf"):
            view = getattr(self, name, None)
            if view is not None:
                view.release()

    # ----------------------------------------------------------------- producer

    def slots_for(self, nbytes: int) -> int:
        """How many slots a message of nbytes occupies."""
        return 1 if nbytes <= self._stride else -(-nbytes // self._stride)

    def send_ready(self) -> bool:
        """True if there is room for at least one more slot-sized message."""
        idx = self._idx
        return idx[L.W_HEAD] - idx[L.W_TAIL] < self.slots

    def free_slots(self) -> int:
        """How many slots are free now (a lower bound: the consumer may free more meanwhile).

        Every message up to slot_size takes one slot, so a producer of such messages reads at
        most this many from its input and a batch never overflows.
        """
        idx = self._idx
        return int(self.slots - (idx[L.W_HEAD] - idx[L.W_TAIL]))

    def fits(self, nbytes: int) -> bool:
        """Whether a message of nbytes would be taken now."""
        return 0 < nbytes <= self.max_message and self.slots_for(nbytes) <= self.free_slots()

    def _check_size(self, n: int, what: str) -> None:
        if not 0 < n <= self.max_message:
            raise ValueError(f"{what} of {n} bytes: ring messages must be 1..{self.max_message}")

    def send(self, data: bytes | bytearray | memoryview) -> bool:
        """Copy one message in and publish it; False (counted as a full event) if no room.

        Raises ValueError if the message is empty or longer than max_message.
        """
        n = len(data)
        stride = self._stride
        if 0 < n <= stride:
            need = 1
        else:
            self._check_size(n, "packet")
            need = -(-n // stride)
        idx = self._idx
        head = idx[L.W_HEAD]
        used = head - idx[L.W_TAIL]
        if used + need > self.slots:
            idx[L.W_FULL] += 1
            return False
        slot = head % self.slots
        self._write(slot, need, data, n)
        self._lens[slot] = n
        if need > 1:
            idx[L.W_SPANNING] += 1  # before head: see the docstring
        idx[L.W_HEAD] = head + need  # publish: after the data and length stores
        idx[L.W_MESSAGES] += 1
        idx[L.W_BYTES] += n
        idx[L.W_HIGH] = max(idx[L.W_HIGH], used + need)
        if idx[L.W_CONSUMER_WAITING]:  # load after the publishing store: see the docstring
            self._wake(self._data_fd, L.W_CONSUMER_WAKEUPS)
        return True

    def _write(self, slot: int, need: int, data: bytes | bytearray | memoryview, n: int) -> None:
        off = self._offsets[slot]
        if slot + need <= self.slots:
            self._mm[off : off + n] = data
            return
        first = (self.slots - slot) * self._stride  # the rest continues at slot 0
        with memoryview(data) as view:
            self._mm[off : off + first] = view[:first]
            self._mm[self._data_off : self._data_off + n - first] = view[first:]

    def send_many(self, packets: Sequence[bytes | bytearray | memoryview]) -> int:
        """Copy as many messages as fit, publish them at once, return how many were taken.

        Taking fewer than len(packets) counts one full event. If a message that would be taken
        is empty or longer than max_message, ValueError is raised and none of them is sent.
        """
        if not packets:
            return 0
        sizes = list(map(len, packets))
        if max(sizes) > self._stride:
            return self._send_spanning(packets, sizes)
        idx = self._idx
        head = idx[L.W_HEAD]
        used = head - idx[L.W_TAIL]
        room = self.slots - used
        if len(packets) > room:
            packets = packets[:room]
            sizes = sizes[:room]
            idx[L.W_FULL] += 1
        take = len(packets)
        if not take:
            return 0
        if min(sizes) < 1:
            self._check_size(0, f"packet {sizes.index(0)}")
        first = head % self.slots
        end = first + take
        mm = self._mm
        for data, off, n in zip(packets, self._offsets2[first:end], sizes, strict=True):
            mm[off : off + n] = data
        if end <= self.slots:
            self._lens[first:end] = array("I", sizes)
        else:
            split = self.slots - first
            self._lens[first:] = array("I", sizes[:split])
            self._lens[: end - self.slots] = array("I", sizes[split:])
        self._publish(head, take, take, sum(sizes), used)
        return take

    def _send_spanning(
        self, packets: Sequence[bytes | bytearray | memoryview], sizes: list[int]
    ) -> int:
        """send_many for a batch with a message longer than one slot."""
        idx = self._idx
        head = idx[L.W_HEAD]
        used = head - idx[L.W_TAIL]
        room = self.slots - used
        needs: list[int] = []
        total = 0
        for i, n in enumerate(sizes):
            self._check_size(n, f"packet {i}")
            need = self.slots_for(n)
            if total + need > room:
                idx[L.W_FULL] += 1
                break
            needs.append(need)
            total += need
        if not needs:
            return 0
        pos = head
        for data, n, need in zip(packets, sizes, needs, strict=False):
            slot = pos % self.slots
            self._write(slot, need, data, n)
            self._lens[slot] = n
            pos += need
        idx[L.W_SPANNING] += sum(need > 1 for need in needs)  # before head: see the docstring
        self._publish(head, total, len(needs), sum(sizes[: len(needs)]), used)
        return len(needs)

    def _publish(self, head: int, slots: int, messages: int, nbytes: int, used: int) -> None:
        idx = self._idx
        idx[L.W_HEAD] = head + slots  # one publish for the batch, after its data and lengths
        idx[L.W_MESSAGES] += messages
        idx[L.W_BYTES] += nbytes
        idx[L.W_HIGH] = max(idx[L.W_HIGH], used + slots)
        if idx[L.W_CONSUMER_WAITING]:  # load after the publishing store: see the docstring
            self._wake(self._data_fd, L.W_CONSUMER_WAKEUPS)

    def producer_fd(self) -> int:
        """eventfd that becomes readable when room may have appeared (after producer_arm)."""
        return self._space_fd

    def producer_arm(self, need: int = 1) -> bool:
        """Announce the producer will sleep until `need` slots are free; False if they are.

        Call when send/send_many found no room, then epoll on producer_fd() only if this
        returned True, and call producer_disarm() after waking (and check again: the consumer
        wakes the producer on every release, which may free fewer slots than needed).
        """
        idx = self._idx
        idx[L.W_PRODUCER_WAITING] = 1
        _barrier.heavy_barrier()
        if self.slots - (idx[L.W_HEAD] - idx[L.W_TAIL]) >= need:
            idx[L.W_PRODUCER_WAITING] = 0
            return False
        idx[L.W_PRODUCER_SLEEPS] += 1
        return True

    def producer_disarm(self) -> None:
        """Stop asking for wake-ups and drain producer_fd()."""
        self._idx[L.W_PRODUCER_WAITING] = 0
        _drain(self._space_fd)

    # ----------------------------------------------------------------- consumer

    def recv_many(self, max_packets: int = 100) -> list[memoryview]:
        """Up to max_packets published messages after those already received; never blocks.

        The views point into the ring (a message that wraps is a copy) and stay valid until
        release(); calling recv_many again before release() returns the messages after them.
        """
        idx = self._idx
        start = idx[L.W_TAIL] + self._pending
        n = idx[L.W_HEAD] - start  # load head before reading the slots it covers
        n = min(n, max_packets)
        if n <= 0:
            return []
        # Loaded after head: no message of 2+ slots below head that we have not seen yet?
        if idx[L.W_SPANNING] != idx[L.W_SPANNING_RELEASED] + self._pending_spanning:
            return self._recv_spanning(start, max_packets)
        first = start % self.slots
        end = first + n
        lens = self._lens
        sizes = lens[first:end] if end <= self.slots else [*lens[first:], *lens[: end - self.slots]]
        buf = self._buf
        self._pending += n
        self._pending_messages += n
        return [
            buf[off : off + size]
            for off, size in zip(self._offsets2[first:end], sizes, strict=True)
        ]

    def _recv_spanning(self, start: int, max_packets: int) -> list[memoryview]:
        head = self._idx[L.W_HEAD]
        slots, stride, buf = self.slots, self._stride, self._buf
        out: list[memoryview] = []
        pos = start
        while pos < head and len(out) < max_packets:
            slot = pos % slots
            size = self._lens[slot]
            need = self.slots_for(size)
            off = self._offsets[slot]
            if slot + need <= slots:
                out.append(buf[off : off + size])
            else:  # wrapped: one copy makes it contiguous
                first = (slots - slot) * stride
                joined = bytearray(size)
                joined[:first] = buf[off : off + first]
                joined[first:] = buf[self._data_off : self._data_off + size - first]
                out.append(memoryview(joined))
            pos += need
            self._pending_spanning += need > 1
        self._pending += pos - start
        self._pending_messages += len(out)
        return out

    def release(self, count: int | None = None) -> None:
        """Free the slots of every message received so far (their views must not be used).

        With `count`, free only the first `count` messages received and give the others
        back: the next recv_many returns them again (a consumer that stops mid-batch)."""
        if count is not None and count < self._pending_messages:
            self._release_first(count)
            return
        if not self._pending:
            return
        idx = self._idx
        idx[L.W_TAIL] += self._pending  # after the reads of those slots
        idx[L.W_RELEASED] += self._pending_messages
        if self._pending_spanning:
            idx[L.W_SPANNING_RELEASED] += self._pending_spanning
            self._pending_spanning = 0
        self._pending = self._pending_messages = 0
        if idx[L.W_PRODUCER_WAITING]:
            self._wake(self._space_fd, L.W_PRODUCER_WAKEUPS)

    def _release_first(self, count: int) -> None:
        idx = self._idx
        slots = spanning = 0
        pos = idx[L.W_TAIL]
        for _ in range(count):  # the slots of the first `count` messages, as recv_many saw them
            need = self.slots_for(self._lens[pos % self.slots])
            slots += need
            spanning += need > 1
            pos += need
        self._pending = self._pending_messages = self._pending_spanning = 0
        if count:
            idx[L.W_TAIL] += slots
            idx[L.W_RELEASED] += count
            if spanning:
                idx[L.W_SPANNING_RELEASED] += spanning
            if idx[L.W_PRODUCER_WAITING]:
                self._wake(self._space_fd, L.W_PRODUCER_WAKEUPS)

    # ----------------------------------------------------------------- native code

    @property
    def stride(self) -> int:
        """The largest message one slot holds (slot_size rounded up to a cache line)."""
        return self._stride

    def memory(self) -> memoryview:
        """The whole mapping, for native code that produces or consumes through it (the
        same protocol; see gateway/native/src/ring.rs). No messages may be pending here."""
        return self._buf

    def spanning_pending(self) -> bool:
        """Whether a message of several slots may be waiting (native code leaves those to
        recv_many)."""
        idx = self._idx
        return bool(idx[L.W_SPANNING] != idx[L.W_SPANNING_RELEASED] + self._pending_spanning)

    def notify_consumer(self) -> None:
        """After native code published: wake the consumer if it sleeps (as send_many does)."""
        if self._idx[L.W_CONSUMER_WAITING]:
            self._wake(self._data_fd, L.W_CONSUMER_WAKEUPS)

    def notify_producer(self) -> None:
        """After native code released: wake the producer if it waits (as release does)."""
        if self._idx[L.W_PRODUCER_WAITING]:
            self._wake(self._space_fd, L.W_PRODUCER_WAKEUPS)

    def consumer_fd(self) -> int:
        """eventfd that becomes readable when data may be there (after consumer_arm)."""
        return self._data_fd

    def consumer_arm(self) -> bool:
        """Announce the consumer will sleep until data arrives; False if some already did.

        Call when recv_many returned nothing, then epoll on consumer_fd() only if this returned
        True, and call consumer_disarm() after waking.
        """
        idx = self._idx
        idx[L.W_CONSUMER_WAITING] = 1
        _barrier.heavy_barrier()
        if idx[L.W_HEAD] != idx[L.W_TAIL] + self._pending:
            idx[L.W_CONSUMER_WAITING] = 0
            return False
        idx[L.W_CONSUMER_SLEEPS] += 1
        return True

    def consumer_disarm(self) -> None:
        """Stop asking for wake-ups and drain consumer_fd()."""
        self._idx[L.W_CONSUMER_WAITING] = 0
        _drain(self._data_fd)

    # ----------------------------------------------------------------- simple blocking waits

    def wait_data(self, timeout: float | None = None) -> bool:
        """Block until data is available (True) or timeout seconds pass (False)."""
        return self._wait(self.consumer_arm, self.consumer_disarm, self._data_fd, timeout)

    def wait_space(self, timeout: float | None = None, nbytes: int = 1) -> bool:
        """Block until a message of nbytes fits (True) or timeout seconds pass (False)."""
        need = self.slots_for(nbytes)
        return self._wait(
            lambda: self.producer_arm(need), self.producer_disarm, self._space_fd, timeout
        )

    def _wait(
        self,
        arm: Callable[[], bool],
        disarm: Callable[[], None],
        fd: int,
        timeout: float | None,
    ) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while arm():
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready = poller.poll(None if left is None else left * 1000)
            disarm()
            if not ready and deadline is not None and time.monotonic() >= deadline:
                return False
        return True

    # ----------------------------------------------------------------- shared

    def stats(self) -> RingStats:
        """Snapshot of the shared counters."""
        return L.read_counters(self._idx)

    def _wake(self, fd: int, counter: int) -> None:
        os.eventfd_write(fd, 1)
        self._idx[counter] += 1


def arm_all(consumers: Sequence[Ring] = (), producers: Sequence[Ring] = ()) -> bool:
    """Arm several rings with one barrier, for a process that sleeps on all of them at once.

    Returns True if every consumer ring is empty and every producer ring full (then epoll on
    their fds); otherwise disarms them all and returns False (there is work: do not sleep).
    """
    for ring in consumers:
        ring._idx[L.W_CONSUMER_WAITING] = 1
    for ring in producers:
        ring._idx[L.W_PRODUCER_WAITING] = 1
    _barrier.heavy_barrier()
    ready = any(r._idx[L.W_HEAD] != r._idx[L.W_TAIL] + r._pending for r in consumers) or any(
        r._idx[L.W_HEAD] - r._idx[L.W_TAIL] < r.slots for r in producers
    )
    if ready:
        disarm_all(consumers, producers)
        return False
    for ring in consumers:
        ring._idx[L.W_CONSUMER_SLEEPS] += 1
    for ring in producers:
        ring._idx[L.W_PRODUCER_SLEEPS] += 1
    return True


def disarm_all(consumers: Sequence[Ring] = (), producers: Sequence[Ring] = ()) -> None:
    """Undo arm_all after waking (clears the flags and drains the eventfds)."""
    for ring in consumers:
        ring.consumer_disarm()
    for ring in producers:
        ring.producer_disarm()


def _drain(fd: int) -> None:
    with contextlib.suppress(BlockingIOError):
        os.eventfd_read(fd)
