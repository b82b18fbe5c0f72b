"""Linux multi-queue TUN queues (the platform leaf behind `tunio.base.Tun`).

Each queue is a nonblocking fd from `/dev/net/tun` attached with
`IFF_TUN | IFF_NO_PI | IFF_MULTI_QUEUE`. The first queue is created with `IFF_TUN_EXCL`, so
we never silently attach to a device somebody else made (the bug that made Firezone drop
multi-queue). A queue is a plain fd: a child forked after `open_multiqueue` uses its inherited
`TunQueue` as is; an unrelated process can receive the fd over a Unix socket
(`socket.send_fds`) and wrap it with `TunQueue.from_fd`.

When do writes block? A TUN write charges the packet to the queue's socket until the stack
has taken it (`ip_rcv` orphans it), and fails with EAGAIN only while those charged bytes reach
the socket's send buffer (`TUNSETSNDBUF`; the kernel default is INT_MAX, so in practice never:
the kernel processes a written packet before `write` returns). `poll` reports the queue not
writable while the device is down (writes then fail with EIO) or while charged bytes exceed
half the send buffer. `send_ready()` returns exactly the kernel's `poll` answer.

Packets larger than the MTU: the MTU only limits what the kernel routes *into* the device
(it fragments or sends ICMP "too big" before that); a write is accepted up to 65535 bytes
whatever the MTU, without IFF_VNET_HDR or offloads (tested with 1420 and 1564 bytes on a
1280 MTU). So a client using MTU 1420 works through a gateway TUN of MTU 1280.

Reads: one `os.read` per packet until EAGAIN, bounded by `max_packets`. A 65535-byte read
buffer costs no more than a 2048-byte one (the bytes object is shrunk in place) and beats
`os.readv` into a preallocated buffer plus a copy (see docs/BENCHMARKS.md).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import select
import struct
from collections.abc import Sequence
from types import TracebackType

from tunio import netlink
from tunio._netns import entered_netns
from tunio.base import DEFAULT_BATCH, TunStats
from tunio.errors import TunError
from tunio.names import validate_ifname
from tunio.offload import PLAIN_HDR, VNET_HDR_LEN, coalesce

log = logging.getLogger(__name__)

TUN_CLONE_DEVICE = "/dev/net/tun"
TUNSETIFF = 0x400454CA
TUNSETSNDBUF = 0x400454D4
TUNSETOWNER = 0x400454CC
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFF_MULTI_QUEUE = 0x0100
IFF_VNET_HDR = 0x4000
IFF_TUN_EXCL = 0x8000  # fail with EBUSY instead of attaching to an existing device
QUEUE_FLAGS = IFF_TUN | IFF_NO_PI | IFF_MULTI_QUEUE
MAX_QUEUES = 256  # kernel limit (MAX_TAP_QUEUES)
# Without IFF_VNET_HDR the kernel never hands us a packet larger than the device MTU, and the
# largest MTU is 65535; a smaller read buffer would silently truncate after an MTU change.
MAX_PACKET = 65535


class TunQueue:
    """One nonblocking queue fd of a multi-queue TUN device; implements `tunio.base.Tun`."""

    __slots__ = ("_closed", "_fd", "_poll", "index", "name", "stats", "vnet_hdr")

    def __init__(self, fd: int, name: str, index: int, *, vnet_hdr: bool = False) -> None:
        self._fd = fd
        self.vnet_hdr = vnet_hdr  # every read and write carries a virtio_net_hdr
        self._closed = False
        self.name = name
        self.index = index
        self.stats = TunStats()
        self._poll = select.poll()
        self._poll.register(fd, select.POLLOUT)

    @classmethod
    def from_fd(cls, fd: int, name: str, index: int) -> TunQueue:
        """Wrap a queue fd received from another process (it is made nonblocking)."""
        os.set_blocking(fd, False)
        return cls(fd, name, index)

    def recv_many(self, max_packets: int = DEFAULT_BATCH) -> list[bytes]:
        # With a vnet header, reads carry a plain one (no read offloads are enabled): skip it.
        skip = VNET_HDR_LEN if self.vnet_hdr else 0
        packets: list[bytes] = []
        read, fd, size = os.read, self._fd, MAX_PACKET + skip
        try:
            for _ in range(max_packets):
                data = read(fd, size)
                packets.append(data[skip:] if skip else data)
        except BlockingIOError:
            pass
        except OSError as exc:
            raise TunError(f"reading queue {self.index} of TUN device {self.name}: {exc}") from exc
        self.stats.received += len(packets)
        return packets

    def send_many(self, packets: Sequence[bytes | bytearray | memoryview]) -> int:
        """Write `packets` in order within each flow; returns how many went out.

        With a vnet header, consecutive TCP segments of a flow go out as one GSO super-packet
        (see tunio.offload); otherwise one write per packet.
        """
        if not self.vnet_hdr:
            return sum(self.send(p) for p in packets)
        sent = 0
        for iovec in coalesce(packets):
            segments = max(1, len(iovec) - 3)  # header, IP, TCP, then one part per segment
            if self._write(iovec):
                sent += segments
                self.stats.sent += segments
                if segments > 1:
                    self.stats.coalesced += segments
        return sent

    def send(self, packet: bytes | bytearray | memoryview) -> bool:
        if not packet:  # writev of nothing "succeeds" without reaching the device
            self.stats.dropped_rejected += 1
            return False
        ok = self._write([PLAIN_HDR, packet] if self.vnet_hdr else [packet])
        if ok:
            self.stats.sent += 1
        return ok

    def _write(self, iovec: list[bytes | bytearray | memoryview]) -> bool:
        """One write of the packet (or super-packet) in `iovec`; False when dropped."""
        try:
            os.writev(self._fd, iovec)
        except BlockingIOError:
            self.stats.dropped_would_block += 1
            return False
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                self.stats.dropped_rejected += 1
                size = sum(map(len, iovec))
                log.debug("%s queue %d rejected a %d-byte packet", self.name, self.index, size)
            elif exc.errno == errno.EIO:
                self.stats.dropped_device_down += 1
                log.debug("%s queue %d: device down, packet dropped", self.name, self.index)
            else:
                raise TunError(
                    f"writing queue {self.index} of TUN device {self.name}: {exc}"
                ) from exc
            return False
        return True

    def send_ready(self) -> bool:
        return any(events & select.POLLOUT for _, events in self._poll.poll(0))

    def set_send_buffer(self, nbytes: int) -> None:
        """Bound the bytes this queue's writes may have in flight in the kernel (TUNSETSNDBUF)."""
        if nbytes <= 0:
            raise TunError(f"send buffer of {self.name} must be positive, got {nbytes}")
        fcntl.ioctl(self._fd, TUNSETSNDBUF, struct.pack("i", nbytes))

    def fileno(self) -> int:
        return self._fd

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            os.close(self._fd)

    def __enter__(self) -> TunQueue:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TunQueue({self.name!r}, index={self.index}, fd={self._fd})"


def _open_queue(name: bytes, *, exclusive: bool, vnet_hdr: bool = False) -> int:
    fd = os.open(TUN_CLONE_DEVICE, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    flags = QUEUE_FLAGS | (IFF_TUN_EXCL if exclusive else 0) | (IFF_VNET_HDR if vnet_hdr else 0)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name, flags))
    except OSError:
        os.close(fd)
        raise
    return fd


def open_multiqueue(
    name: str, queues: int, *, netns: str | None = None, vnet_hdr: bool = False
) -> list[TunQueue]:
    """Create TUN device `name` with `queues` nonblocking queues and return them.

    Fails with `DeviceInUseError` if another process holds queues of a device with that name,
    `DeviceExistsError` if a device of that name exists that firezone-gw did not make; an idle
    device left by an earlier firezone-gw run is deleted and recreated. The device lives as
    long as one of its queues is open. `netns` creates it inside that named namespace.
    `vnet_hdr` (IFF_VNET_HDR) lets `send_many` write TCP super-packets (GSO); reads get no
    offloads, so they stay ordinary packets.
    """
    raw = validate_ifname(name)
    if not 1 <= queues <= MAX_QUEUES:
        raise TunError(f"TUN device {name}: queue count must be 1..{MAX_QUEUES}, got {queues}")
    fds: list[int] = []
    try:
        with entered_netns(netns):
            fds.append(_create_first_queue(raw, name, netns, vnet_hdr))
            for _ in range(queues - 1):
                fds.append(_open_queue(raw, exclusive=False, vnet_hdr=vnet_hdr))
    except OSError as exc:
        for fd in fds:
            os.close(fd)
        raise TunError(f"opening queue {len(fds)} of TUN device {name}: {exc}") from exc
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return [TunQueue(fd, name, i, vnet_hdr=vnet_hdr) for i, fd in enumerate(fds)]


def _create_first_queue(raw: bytes, name: str, netns: str | None, vnet_hdr: bool) -> int:
    try:
        fd = _open_queue(raw, exclusive=True, vnet_hdr=vnet_hdr)
    except OSError as exc:
        if exc.errno != errno.EBUSY:
            raise
        netlink.remove_stale_device(name, netns=netns)  # raises unless the old one was ours
        fd = _open_queue(raw, exclusive=True, vnet_hdr=vnet_hdr)
    try:
        _mark_owned(fd)
    except OSError:
        os.close(fd)
        raise
    return fd


def _mark_owned(fd: int) -> None:
    """Make our uid the device's owner (IFLA_TUN_OWNER), which marks the device as ours.

    Not an alias (IFLA_IFALIAS): `ip -stats link show` prints that as an extra line, and
    scripts read those lines by position. The owner only shows with `ip -details`. It also
    lets processes of our uid attach queues without CAP_NET_ADMIN, which changes nothing
    for root and, under the service's own user, admits only the gateway.
    """
    fcntl.ioctl(fd, TUNSETOWNER, os.geteuid())  # the uid is the argument itself
