"""Single-producer/single-consumer packet ring in POSIX shared memory with eventfd wake-ups.

Layout (one file in /dev/shm, mmapped by both ends)::

    header   3 cache lines of 64-bit words: geometry + owner | producer-written | consumer-written
    lengths  `slots` x u32, the length of the packet in each slot
    data     `slots` x stride bytes, stride = slot_size rounded up to 64

`head` (packets ever published, written only by the producer) and `tail` (packets ever
released, written only by the consumer) are free-running 64-bit counters; slot = index % slots
and occupancy = head - tail, so they never wrap in practice (2**64 packets). Every shared word
has exactly one writer. Slots are fixed size (max packet = MTU + the data plane's header):
1000 x 1440 bytes for wg-quick's MTU 1420 is 1.4 MiB, 1000 x 9024 for jumbo frames 9 MiB, so
a variable-length byte ring would save little and cost per-packet Python work.

Attaching: the supervisor creates every ring (it owns and unlinks the segment) and forks the
children, which use the inherited `Ring` object and eventfds. A restarted child is forked again
from the supervisor's object: the ring state lives entirely in shared memory (each call re-reads
head/tail), so it continues where its predecessor stopped; packets a dead consumer had received
but not released are delivered again. An unrelated process may `Ring.attach(name)`: it copies
the eventfds from the live owner with pidfd_getfd(2).

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
import ctypes
import mmap
import os
import platform
import select
import time
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Self

import psutil

from shm_ring import _barrier

SHM_DIR = "/dev/shm"  # noqa: S108 - POSIX shm lives here on Linux; names are O_EXCL-created
MAGIC = 0x464A_5247_5249_4E47  # "FZGRRING"-ish, marks our segments
VERSION = 1
MAX_SLOTS = 1 << 20
MAX_SLOT_SIZE = 65535
MAX_SEGMENT_BYTES = 1 << 30
MAX_NAME_LEN = 200
_START_TIME_SLACK_US = 5_000  # create_time comes from clock ticks: tolerate rounding
_CACHE_LINE = 64

# Header word indices (8-byte words). Line 0: immutable geometry and owner.
_W_MAGIC, _W_VERSION, _W_SLOTS, _W_SLOT_SIZE, _W_STRIDE = 0, 1, 2, 3, 4
_W_OWNER_PID, _W_OWNER_START, _W_DATA_FD, _W_SPACE_FD = 5, 6, 7, 8
# Producer-written line.
_W_HEAD, _W_BYTES, _W_FULL, _W_HIGH = 16, 17, 18, 19
_W_PRODUCER_WAITING, _W_CONSUMER_WAKEUPS, _W_PRODUCER_SLEEPS = 20, 21, 22
# Consumer-written line.
_W_TAIL, _W_CONSUMER_WAITING, _W_PRODUCER_WAKEUPS, _W_CONSUMER_SLEEPS = 32, 33, 34, 35
_HEADER_BYTES = 48 * 8

_NR_PIDFD_GETFD = 438


@dataclass(frozen=True, slots=True)
class RingStats:
    """A snapshot of a ring's shared counters (readable by any process that maps it)."""

    slots: int
    slot_size: int
    packets: int  # published by the producer, ever
    bytes: int
    released: int  # freed by the consumer, ever
    occupancy: int  # packets in the ring now
    high_water: int  # highest occupancy seen right after a publish
    full_events: int  # send/send_many calls that found no room for a packet
    consumer_sleeps: int
    consumer_wakeups: int  # eventfd writes by the producer
    producer_sleeps: int
    producer_wakeups: int  # eventfd writes by the consumer


def _round_up(n: int, to: int) -> int:
    return (n + to - 1) // to * to


def _check_geometry(slots: int, slot_size: int) -> int:
    """Validate geometry and return the segment size; errors name the limit."""
    if type(slots) is not int or not 1 <= slots <= MAX_SLOTS:
        raise ValueError(f"ring slots must be an int in 1..{MAX_SLOTS}, got {slots!r}")
    if type(slot_size) is not int or not 1 <= slot_size <= MAX_SLOT_SIZE:
        raise ValueError(f"ring slot_size must be an int in 1..{MAX_SLOT_SIZE}, got {slot_size!r}")
    size = _data_offset(slots) + slots * _round_up(slot_size, _CACHE_LINE)
    if size > MAX_SEGMENT_BYTES:
        raise ValueError(
            f"ring of {slots} x {slot_size} bytes needs {size} bytes, "
            f"over the {MAX_SEGMENT_BYTES}-byte limit"
        )
    return size


def _data_offset(slots: int) -> int:
    return _round_up(_HEADER_BYTES + 4 * slots, _CACHE_LINE)


def _check_name(name: str) -> str:
    if (
        not isinstance(name, str)
        or not name
        or "/" in name
        or "\0" in name
        or len(name) > MAX_NAME_LEN
    ):
        raise ValueError(
            f"ring name must be 1..{MAX_NAME_LEN} characters without '/', got {name!r}"
        )
    return os.path.join(SHM_DIR, name)


def _check_arch() -> None:
    if platform.machine() != "x86_64":
        raise RuntimeError(
            f"shm_ring relies on x86-64 store ordering; {platform.machine()} needs "
            "release/acquire index accesses (see the shm_ring.ring docstring)"
        )


def process_start_us(pid: int) -> int | None:
    """A process's start time in microseconds since the epoch, or None if it is gone.

    Together with the pid it identifies a process across pid reuse.
    """
    try:
        created: float = psutil.Process(pid).create_time()
        return round(created * 1e6)
    except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
        return None


def owner_alive(pid: int, start_us: int) -> bool:
    """Whether the process that created a segment still runs (same pid and start time)."""
    now = process_start_us(pid)
    return now is not None and abs(now - start_us) < _START_TIME_SLACK_US


class Ring:
    """One SPSC packet ring. Exactly one process produces and one consumes at a time."""

    def __init__(  # noqa: PLR0913 - private: create() and attach() are the constructors
        self, name: str, fd: int, size: int, *, data_fd: int, space_fd: int, owner: bool
    ) -> None:
        self.name = name
        self._mm = mmap.mmap(fd, size)
        os.close(fd)
        self._buf = memoryview(self._mm)
        self._idx = self._buf[:_HEADER_BYTES].cast("Q")
        idx = self._idx
        if idx[_W_MAGIC] != MAGIC or idx[_W_VERSION] != VERSION:
            self._release_views()
            self._mm.close()
            raise ValueError(f"{name!r} is not a version-{VERSION} shm_ring segment")
        self.slots: int = idx[_W_SLOTS]
        self.slot_size: int = idx[_W_SLOT_SIZE]
        self._stride: int = idx[_W_STRIDE]
        if _check_geometry(self.slots, self.slot_size) != size:
            self._release_views()
            self._mm.close()
            raise ValueError(f"segment {name!r} has {size} bytes, its header disagrees")
        data_off = _data_offset(self.slots)
        self._lens = self._buf[_HEADER_BYTES : _HEADER_BYTES + 4 * self.slots].cast("I")
        self._offsets = [data_off + i * self._stride for i in range(self.slots)]
        self._offsets2 = self._offsets * 2  # a batch that wraps is one slice of this
        self._data_fd = data_fd
        self._space_fd = space_fd
        self._owner = owner
        self._owner_pid = idx[_W_OWNER_PID]
        self._pending = 0  # packets returned by recv_many and not yet released
        self._closed = False

    # ----------------------------------------------------------------- lifecycle

    @classmethod
    def create(cls, name: str, *, slots: int = 1000, slot_size: int = 1280) -> Ring:
        """Create the segment and its two eventfds; the caller owns it and must unlink it.

        A segment of the same name left by a crashed instance (its creator is dead) is removed
        first; one whose creator still runs raises FileExistsError.
        """
        _check_arch()
        path = _check_name(name)
        size = _check_geometry(slots, slot_size)
        _barrier.register()
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            from shm_ring.stale import remove_if_stale  # noqa: PLC0415 - avoids an import cycle

            if not remove_if_stale(name):
                raise FileExistsError(
                    f"shared-memory ring {name!r} exists and its creator is alive "
                    "(or it is not an shm_ring segment)"
                ) from None
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        data_fd = space_fd = -1
        try:
            os.ftruncate(fd, size)
            data_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            space_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            with mmap.mmap(fd, _HEADER_BYTES) as hm, memoryview(hm) as hv, hv.cast("Q") as words:
                pid = os.getpid()
                start = process_start_us(pid) or 0
                for word, value in (
                    (_W_SLOTS, slots),
                    (_W_SLOT_SIZE, slot_size),
                    (_W_STRIDE, _round_up(slot_size, _CACHE_LINE)),
                    (_W_OWNER_PID, pid),
                    (_W_OWNER_START, start),
                    (_W_DATA_FD, data_fd),
                    (_W_SPACE_FD, space_fd),
                    (_W_VERSION, VERSION),
                    (_W_MAGIC, MAGIC),  # last: marks the header complete
                ):
                    words[word] = value
            return cls(name, fd, size, data_fd=data_fd, space_fd=space_fd, owner=True)
        except BaseException:
            for efd in (data_fd, space_fd):
                if efd >= 0:
                    os.close(efd)
            with contextlib.suppress(OSError):
                os.close(fd)
            os.unlink(path)
            raise

    @classmethod
    def attach(cls, name: str, *, data_fd: int | None = None, space_fd: int | None = None) -> Ring:
        """Map an existing ring by name (for a process that did not inherit the `Ring`).

        The eventfds are copied from the live creator with pidfd_getfd(2) unless given.
        """
        _check_arch()
        path = _check_name(name)
        _barrier.register()
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            if size < _HEADER_BYTES:
                raise ValueError(f"{name!r} is too small to be an shm_ring segment")
            with mmap.mmap(fd, _HEADER_BYTES) as hm, memoryview(hm) as hv, hv.cast("Q") as words:
                pid, start = words[_W_OWNER_PID], words[_W_OWNER_START]
                remote = words[_W_DATA_FD], words[_W_SPACE_FD]
            if data_fd is None or space_fd is None:
                if not owner_alive(pid, start):
                    raise ProcessLookupError(f"creator (pid {pid}) of ring {name!r} is gone")
                data_fd, space_fd = _copy_fds(pid, remote)
        except BaseException:
            os.close(fd)
            raise
        return cls(name, fd, size, data_fd=data_fd, space_fd=space_fd, owner=False)

    def close(self) -> None:
        """Unmap the segment and close the eventfds (views from recv_many become invalid)."""
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

    def unlink(self) -> None:
        """Remove the segment name (the creator does this when the gateway stops)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(SHM_DIR, self.name))

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
        if self._owner and os.getpid() == self._owner_pid:
            self.unlink()

    def _release_views(self) -> None:
        for name in ("_lens", "_idx", "_buf"):
            view = getattr(self, name, None)
            if view is not None:
                view.release()

    # ----------------------------------------------------------------- producer

    def send_ready(self) -> bool:
        """True if there is room for at least one more packet."""
        idx = self._idx
        return idx[_W_HEAD] - idx[_W_TAIL] < self.slots

    def free_slots(self) -> int:
        """How many packets fit now (a lower bound: the consumer may free more meanwhile).

        A producer reads at most this many from its input, so a batch never overflows.
        """
        idx = self._idx
        return int(self.slots - (idx[_W_HEAD] - idx[_W_TAIL]))

    def send(self, data: bytes | bytearray | memoryview) -> bool:
        """Copy one packet in and publish it; False (counted as a full event) if no room.

        Raises ValueError if the packet is empty or longer than slot_size.
        """
        n = len(data)
        if not 0 < n <= self.slot_size:
            raise ValueError(f"packet of {n} bytes: ring packets must be 1..{self.slot_size}")
        idx = self._idx
        head = idx[_W_HEAD]
        used = head - idx[_W_TAIL]
        if used >= self.slots:
            idx[_W_FULL] += 1
            return False
        slot = head % self.slots
        off = self._offsets[slot]
        self._mm[off : off + n] = data
        self._lens[slot] = n
        idx[_W_HEAD] = head + 1  # publish: after the data and length stores
        idx[_W_BYTES] += n
        if used >= idx[_W_HIGH]:
            idx[_W_HIGH] = used + 1
        if idx[_W_CONSUMER_WAITING]:  # load after the publishing store: see the docstring
            self._wake(self._data_fd, _W_CONSUMER_WAKEUPS)
        return True

    def send_many(self, packets: Sequence[bytes | bytearray | memoryview]) -> int:
        """Copy as many packets as fit, publish them at once, return how many were taken.

        Taking fewer than len(packets) counts one full event. If a packet that would be taken
        is empty or longer than slot_size, ValueError is raised and none of them is sent.
        """
        idx = self._idx
        head = idx[_W_HEAD]
        used = head - idx[_W_TAIL]
        room = self.slots - used
        if len(packets) > room:
            packets = packets[:room]
            idx[_W_FULL] += 1
        take = len(packets)
        if not take:
            return 0
        sizes = list(map(len, packets))
        if min(sizes) < 1 or max(sizes) > self.slot_size:
            bad = next(i for i, n in enumerate(sizes) if not 0 < n <= self.slot_size)
            raise ValueError(
                f"packet {bad} of {sizes[bad]} bytes: ring packets must be 1..{self.slot_size}"
            )
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
        idx[_W_HEAD] = head + take  # one publish for the batch, after its data and lengths
        idx[_W_BYTES] += sum(sizes)
        idx[_W_HIGH] = max(idx[_W_HIGH], used + take)
        if idx[_W_CONSUMER_WAITING]:  # load after the publishing store: see the docstring
            self._wake(self._data_fd, _W_CONSUMER_WAKEUPS)
        return take

    def producer_fd(self) -> int:
        """eventfd that becomes readable when room may have appeared (after producer_arm)."""
        return self._space_fd

    def producer_arm(self) -> bool:
        """Announce the producer will sleep until there is room; False if there already is.

        Call when send/send_many found the ring full, then epoll on producer_fd() only if this
        returned True, and call producer_disarm() after waking.
        """
        idx = self._idx
        idx[_W_PRODUCER_WAITING] = 1
        _barrier.heavy_barrier()
        if idx[_W_HEAD] - idx[_W_TAIL] < self.slots:
            idx[_W_PRODUCER_WAITING] = 0
            return False
        idx[_W_PRODUCER_SLEEPS] += 1
        return True

    def producer_disarm(self) -> None:
        """Stop asking for wake-ups and drain producer_fd()."""
        self._idx[_W_PRODUCER_WAITING] = 0
        _drain(self._space_fd)

    # ----------------------------------------------------------------- consumer

    def recv_many(self, max_packets: int = 100) -> list[memoryview]:
        """Up to max_packets published packets after those already received; never blocks.

        The views point into the ring and stay valid until release(); calling recv_many again
        before release() returns the packets after them.
        """
        idx = self._idx
        start = idx[_W_TAIL] + self._pending
        n = idx[_W_HEAD] - start  # load head before reading the slots it covers
        n = min(n, max_packets)
        if n <= 0:
            return []
        first = start % self.slots
        end = first + n
        lens = self._lens
        sizes = lens[first:end] if end <= self.slots else [*lens[first:], *lens[: end - self.slots]]
        buf = self._buf
        self._pending += n
        return [
            buf[off : off + size]
            for off, size in zip(self._offsets2[first:end], sizes, strict=True)
        ]

    def release(self) -> None:
        """Free the slots of every packet received so far (their views must not be used)."""
        if not self._pending:
            return
        idx = self._idx
        idx[_W_TAIL] += self._pending  # after the reads of those slots
        self._pending = 0
        if idx[_W_PRODUCER_WAITING]:
            self._wake(self._space_fd, _W_PRODUCER_WAKEUPS)

    def consumer_fd(self) -> int:
        """eventfd that becomes readable when data may be there (after consumer_arm)."""
        return self._data_fd

    def consumer_arm(self) -> bool:
        """Announce the consumer will sleep until data arrives; False if some already did.

        Call when recv_many returned nothing, then epoll on consumer_fd() only if this returned
        True, and call consumer_disarm() after waking.
        """
        idx = self._idx
        idx[_W_CONSUMER_WAITING] = 1
        _barrier.heavy_barrier()
        if idx[_W_HEAD] != idx[_W_TAIL] + self._pending:
            idx[_W_CONSUMER_WAITING] = 0
            return False
        idx[_W_CONSUMER_SLEEPS] += 1
        return True

    def consumer_disarm(self) -> None:
        """Stop asking for wake-ups and drain consumer_fd()."""
        self._idx[_W_CONSUMER_WAITING] = 0
        _drain(self._data_fd)

    # ----------------------------------------------------------------- simple blocking waits

    def wait_data(self, timeout: float | None = None) -> bool:
        """Block until data is available (True) or timeout seconds pass (False)."""
        return self._wait(self.consumer_arm, self.consumer_disarm, self._data_fd, timeout)

    def wait_space(self, timeout: float | None = None) -> bool:
        """Block until there is room for a packet (True) or timeout seconds pass (False)."""
        return self._wait(self.producer_arm, self.producer_disarm, self._space_fd, timeout)

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
        return _stats_from(self._idx)

    def _wake(self, fd: int, counter: int) -> None:
        os.eventfd_write(fd, 1)
        self._idx[counter] += 1


def arm_all(consumers: Sequence[Ring] = (), producers: Sequence[Ring] = ()) -> bool:
    """Arm several rings with one barrier, for a process that sleeps on all of them at once.

    Returns True if every consumer ring is empty and every producer ring full (then epoll on
    their fds); otherwise disarms them all and returns False (there is work: do not sleep).
    """
    for ring in consumers:
        ring._idx[_W_CONSUMER_WAITING] = 1
    for ring in producers:
        ring._idx[_W_PRODUCER_WAITING] = 1
    _barrier.heavy_barrier()
    ready = any(r._idx[_W_HEAD] != r._idx[_W_TAIL] + r._pending for r in consumers) or any(
        r._idx[_W_HEAD] - r._idx[_W_TAIL] < r.slots for r in producers
    )
    if ready:
        disarm_all(consumers, producers)
        return False
    for ring in consumers:
        ring._idx[_W_CONSUMER_SLEEPS] += 1
    for ring in producers:
        ring._idx[_W_PRODUCER_SLEEPS] += 1
    return True


def disarm_all(consumers: Sequence[Ring] = (), producers: Sequence[Ring] = ()) -> None:
    """Undo arm_all after waking (clears the flags and drains the eventfds)."""
    for ring in consumers:
        ring.consumer_disarm()
    for ring in producers:
        ring.producer_disarm()


def _stats_from(words: memoryview) -> RingStats:
    head, tail = words[_W_HEAD], words[_W_TAIL]
    return RingStats(
        slots=words[_W_SLOTS],
        slot_size=words[_W_SLOT_SIZE],
        packets=head,
        bytes=words[_W_BYTES],
        released=tail,
        occupancy=head - tail,
        high_water=words[_W_HIGH],
        full_events=words[_W_FULL],
        consumer_sleeps=words[_W_CONSUMER_SLEEPS],
        consumer_wakeups=words[_W_CONSUMER_WAKEUPS],
        producer_sleeps=words[_W_PRODUCER_SLEEPS],
        producer_wakeups=words[_W_PRODUCER_WAKEUPS],
    )


def read_stats(name: str) -> RingStats:
    """Counters of ring `name`, read-only, from any process (e.g. the metrics endpoint)."""
    path = _check_name(name)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if os.fstat(fd).st_size < _HEADER_BYTES:
            raise ValueError(f"{name!r} is too small to be an shm_ring segment")
        with (
            mmap.mmap(fd, _HEADER_BYTES, prot=mmap.PROT_READ) as hm,
            memoryview(hm) as hv,
            hv.cast("Q") as words,
        ):
            if words[_W_MAGIC] != MAGIC or words[_W_VERSION] != VERSION:
                raise ValueError(f"{name!r} is not a version-{VERSION} shm_ring segment")
            return _stats_from(words)
    finally:
        os.close(fd)


def _drain(fd: int) -> None:
    with contextlib.suppress(BlockingIOError):
        os.eventfd_read(fd)


def _copy_fds(pid: int, remote: tuple[int, int]) -> tuple[int, int]:
    """Duplicate two of process pid's file descriptors into this process (pidfd_getfd)."""
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(pid)
    try:
        local: list[int] = []
        for rfd in remote:
            fd = int(libc.syscall(ctypes.c_long(_NR_PIDFD_GETFD), pidfd, rfd, 0))
            if fd < 0:
                err = ctypes.get_errno()
                for done in local:
                    os.close(done)
                raise OSError(err, f"pidfd_getfd of fd {rfd} in pid {pid}: {os.strerror(err)}")
            os.set_inheritable(fd, False)
            local.append(fd)
        return local[0], local[1]
    finally:
        os.close(pidfd)
