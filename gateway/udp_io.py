"""The gateway's UDP socket: dual-stack, large buffers, GRO receive and GSO batched send.

Pure helpers first (batch planning, GRO splitting, address forms, PKTINFO control
messages), then `UdpIo`, the thin socket wrapper the UDP process drives from its epoll loop.
The socket is non-blocking: `recv_batch` returns what is ready, `send_batch` stops at the
first EAGAIN and says how many datagrams it consumed, so the caller keeps the rest and waits
for EPOLLOUT (backpressure).

Sticky source addresses: the socket binds the wildcard address, so it receives with
IPV6_RECVPKTINFO (IP_PKTINFO on an IPv4-only socket) and each sender comes back as a
`StickyEndpoint` with the local address the datagram arrived at. Sending to a
StickyEndpoint puts that address in a PKTINFO control message, so the reply leaves from the
address the peer wrote to (a peer that checks, such as wireguard-go, would roam otherwise).
When the kernel refuses the source (the address was removed) the datagram goes again from
the kernel's choice and `tx_source_fallbacks` counts it.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.endpoint import Endpoint, StickyEndpoint

Datagram = bytes | bytearray | memoryview

# Linux values; Python's socket module has no names for them.
UDP_SEGMENT = 103
UDP_GRO = 104
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33
IP_PKTINFO = 8

DEFAULT_RCVBUF = 16 * 1024 * 1024  # absorbs bursts while the UDP process is busy
DEFAULT_SNDBUF = 2 * 1024 * 1024
# The kernel's UDP_MAX_SEGMENTS.
GSO_MAX_SEGMENTS = 64
# One send carries at most 64 KiB of IP packet: 65535 minus the IPv6 and UDP headers is the
# payload bound that fits both families.
GSO_MAX_BYTES = 65535 - 40 - 8
# A GRO read can hold up to 64 KiB of coalesced payload.
RECV_BUFFER_BYTES = 65536
_CMSG_INT = struct.Struct("=i")
_CMSG_U16 = struct.Struct("=H")
# struct in_pktinfo {ifindex, spec_dst, addr} and struct in6_pktinfo {addr, ifindex}.
_IN_PKTINFO = struct.Struct("=i4s4s")
_IN6_PKTINFO = struct.Struct("=16sI")
_RECV_CMSG_SPACE = socket.CMSG_SPACE(_CMSG_INT.size) + socket.CMSG_SPACE(_IN6_PKTINFO.size)
_V4_MAPPED_BYTES = bytes(10) + b"\xff\xff"
_IPV4_SIZE = 4
_V4_MAPPED_PREFIX = "::ffff:"
_ADDRESS_CACHE_MAX = 4096
_MAX_PORT = 65535
# Errors that mean "the kernel will not do GSO here": fall back to one datagram per send.
_GSO_REFUSED = (errno.EIO, errno.EINVAL)
# What the kernel says to a source address that is not ours (any more): EINVAL for IPv6,
# ENETUNREACH for IPv4 (its route lookup finds no local address), EADDRNOTAVAIL. Then the
# datagram goes again without the source (a truly unreachable destination fails again).
_SOURCE_REFUSED = frozenset({errno.EINVAL, errno.ENETUNREACH, errno.EADDRNOTAVAIL})
# Pending socket errors from ICMP that a read reports once (then the socket reads on).
_ONE_SHOT_RX_ERRORS = frozenset(
    {errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN, errno.ENETDOWN}
)


@dataclass(frozen=True, slots=True)
class GsoBatch:
    """A run of datagrams to one endpoint from one source address (b"": the kernel's
    choice), all `segment_size` long except possibly the last."""

    dest: Endpoint
    source: bytes
    segment_size: int
    datagrams: list[Datagram]


def plan_gso_batches(
    items: Sequence[tuple[Endpoint, Datagram]],
    max_segments: int = GSO_MAX_SEGMENTS,
    max_bytes: int = GSO_MAX_BYTES,
) -> list[GsoBatch]:
    """Group (endpoint, datagram) pairs into GSO sends, keeping their order.

    A batch is consecutive datagrams to the same endpoint from the same source address (a
    StickyEndpoint's local address) with the size of its first one; one shorter datagram
    may close it. Batches hold at most `max_segments` datagrams and
    `max_bytes` bytes. Empty datagrams and datagrams over `max_bytes` go alone.
    """
    batches: list[GsoBatch] = []
    current: GsoBatch | None = None
    total = 0
    closed = False
    for dest, data in items:
        size = len(data)
        source = dest.local if type(dest) is StickyEndpoint else b""
        if (
            current is not None
            and not closed
            and dest == current.dest
            and source == current.source
            and 0 < size <= current.segment_size
            and len(current.datagrams) < max_segments
            and total + size <= max_bytes
        ):
            current.datagrams.append(data)
            total += size
            closed = size < current.segment_size
            continue
        current = GsoBatch(dest, source, size, [data])
        batches.append(current)
        total = size
        # An empty or oversized datagram cannot be a GSO segment: never extend its batch.
        closed = size == 0 or size > max_bytes
    return batches


def split_gro(data: memoryview, segment_size: int) -> list[memoryview]:
    """Cut one coalesced GRO read into its datagrams (the last one may be shorter)."""
    if segment_size <= 0 or len(data) <= segment_size:
        return [data]
    return [data[i : i + segment_size] for i in range(0, len(data), segment_size)]


def endpoint_from_sockaddr(
    addr: tuple[str, int] | tuple[str, int, int, int], local: bytes = b""
) -> Endpoint:
    """Present a received address as (host, port), with v4-mapped IPv6 as plain IPv4; a
    StickyEndpoint when the local address it arrived at is known."""
    host = addr[0]
    if host.startswith(_V4_MAPPED_PREFIX) and "." in host:
        host = host[len(_V4_MAPPED_PREFIX) :]
    return StickyEndpoint(host, addr[1], local) if local else (host, addr[1])


def local_from_pktinfo(level: int, kind: int, payload: bytes) -> bytes | None:
    """The local address a datagram arrived at, from a received IPV6_PKTINFO or IP_PKTINFO
    control message (4 bytes for IPv4, also v4-mapped); None for any other message."""
    if level == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO:
        if len(payload) < _IN6_PKTINFO.size:
            return None
        address = payload[:16]
        return address[12:] if address.startswith(_V4_MAPPED_BYTES) else address
    if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(payload) >= _IN_PKTINFO.size:
        # ipi_spec_dst: the local address (ipi_addr is the header's, maybe a broadcast).
        return payload[4:8]
    return None


def source_cmsg(source: bytes, family: socket.AddressFamily) -> tuple[int, int, bytes]:
    """The PKTINFO control message that makes a datagram leave from `source` (a packed
    IPv4 or IPv6 address) on a socket of `family`; the interface is the route's."""
    if family == socket.AF_INET6:
        if len(source) == _IPV4_SIZE:  # to a v4-mapped destination: the kernel takes it too
            source = _V4_MAPPED_BYTES + source
        return socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, _IN6_PKTINFO.pack(source, 0)
    return socket.IPPROTO_IP, IP_PKTINFO, _IN_PKTINFO.pack(0, source, bytes(4))


def sockaddr_for(endpoint: Endpoint, family: socket.AddressFamily) -> Endpoint:
    """The address to pass to a socket of `family`: IPv4 hosts map into a dual-stack socket.

    Raises ValueError for anything but a numeric IP address and a valid port (a host name
    would make the send path block on a DNS lookup).
    """
    host, port = endpoint
    ip = ipaddress.ip_address(host.partition("%")[0])
    if not 0 < port <= _MAX_PORT:
        raise ValueError(f"bad UDP port {port} for {host}")
    if family == socket.AF_INET6 and ip.version == 4:  # noqa: PLR2004 # IP version
        return _V4_MAPPED_PREFIX + host, port
    return host, port


@dataclass(slots=True)
class SendStats:
    """What one `send_batch` call did. `consumed` items were handled (sent or dropped);
    when `blocked` the socket buffer is full and items[consumed:] were not tried."""

    consumed: int = 0
    sent: int = 0
    dropped: int = 0
    syscalls: int = 0
    gso_batches: int = 0
    blocked: bool = False


@dataclass(slots=True)
class UdpCounters:
    rx_datagrams: int = 0
    rx_syscalls: int = 0
    rx_coalesced_reads: int = 0
    rx_errors: int = 0
    tx_datagrams: int = 0
    tx_syscalls: int = 0
    tx_gso_batches: int = 0
    tx_gso_datagrams: int = 0
    tx_dropped: int = 0
    tx_source_fallbacks: int = 0  # sent again without the sticky source the kernel refused
    gso_fallbacks: int = 0
    gso_oversize: int = 0


class UdpIo:
    """One non-blocking UDP socket on `port` for IPv4 and IPv6 (dual-stack when possible)."""

    def __init__(  # noqa: PLR0913 # socket options mirror the config keys, all but port keyword-able
        self,
        port: int,
        rcvbuf: int = DEFAULT_RCVBUF,
        sndbuf: int = DEFAULT_SNDBUF,
        *,
        bind_host: str | None = None,
        gso: bool = True,
        gro: bool = True,
        sock: socket.socket | None = None,
    ) -> None:
        """`sock`: a bound UDP socket to use instead of binding `port` (one handed over
        from a previous supervisor; its options are set again)."""
        self.sock = self._open(port, bind_host) if sock is None else sock
        self.family = socket.AddressFamily(self.sock.family)
        try:
            self.rcvbuf = self._set_buffer(socket.SO_RCVBUF, SO_RCVBUFFORCE, rcvbuf)
            self.sndbuf = self._set_buffer(socket.SO_SNDBUF, SO_SNDBUFFORCE, sndbuf)
            self.gro_enabled = gro and self._try_enable_gro()
            self.gso_enabled = gso and self._kernel_has_gso()
            self._receive_pktinfo()
        except OSError:
            self.sock.close()
            raise
        self.port: int = self.sock.getsockname()[1]
        self.counters = UdpCounters()
        self._recv_buffer = bytearray(RECV_BUFFER_BYTES)
        self._recv_view = memoryview(self._recv_buffer)
        self._pending: deque[tuple[memoryview, Endpoint]] = deque()
        self._sockaddrs: dict[Endpoint, Endpoint] = {}
        self._source_cmsgs: dict[bytes, list[tuple[int, int, bytes]]] = {}
        self._peer_names: dict[
            tuple[tuple[str, int] | tuple[str, int, int, int], bytes], Endpoint
        ] = {}

    @staticmethod
    def _open(port: int, bind_host: str | None) -> socket.socket:
        if bind_host is None or ":" in bind_host:
            try:
                sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            except OSError:  # IPv6 disabled in this kernel: IPv4 only.
                if bind_host is not None:
                    raise
            else:
                try:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                    sock.bind((bind_host or "::", port))
                except OSError:
                    sock.close()
                    raise
                sock.setblocking(False)
                return sock
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.bind((bind_host or "0.0.0.0", port))  # noqa: S104 # a gateway listens on all addresses
        except OSError:
            sock.close()
            raise
        sock.setblocking(False)
        return sock

    def _set_buffer(self, option: int, force_option: int, size: int) -> int:
        return set_socket_buffer(self.sock, option, force_option, size)

    def _try_enable_gro(self) -> bool:
        try:
            self.sock.setsockopt(socket.SOL_UDP, UDP_GRO, 1)
        except OSError as exc:
            if exc.errno in (errno.ENOPROTOOPT, errno.EINVAL):
                return False
            raise
        return True

    def _receive_pktinfo(self) -> None:
        """Have each datagram say which local address it arrived at (a dual-stack socket
        reports IPv4 ones as v4-mapped IPV6_PKTINFO)."""
        if self.family == socket.AF_INET6:
            self.sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
            self._pktinfo_level, self._pktinfo_kind = socket.IPPROTO_IPV6, socket.IPV6_PKTINFO
        else:
            self.sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
            self._pktinfo_level, self._pktinfo_kind = socket.IPPROTO_IP, IP_PKTINFO

    def _kernel_has_gso(self) -> bool:
        try:
            self.sock.getsockopt(socket.SOL_UDP, UDP_SEGMENT)
        except OSError as exc:
            if exc.errno in (errno.ENOPROTOOPT, errno.EINVAL):
                return False
            raise
        return True

    # --- lifecycle -------------------------------------------------------------------------

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> UdpIo:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- receive ---------------------------------------------------------------------------

    @property
    def pending(self) -> bool:
        """Datagrams already read (split from a GRO read) waiting for the next recv_batch:
        call it again without waiting for epoll."""
        return bool(self._pending)

    def recv_batch(self, max_datagrams: int) -> list[tuple[memoryview, Endpoint]]:
        """Up to `max_datagrams` received datagrams with their sender, without blocking.

        Each datagram is a read-only view that stays valid after later calls.
        """
        out: list[tuple[memoryview, Endpoint]] = []
        pending = self._pending
        while pending and len(out) < max_datagrams:
            out.append(pending.popleft())
        counters = self.counters
        sock = self.sock
        view = self._recv_view
        pktinfo_level, pktinfo_kind = self._pktinfo_level, self._pktinfo_kind
        while len(out) < max_datagrams:
            try:
                nbytes, ancdata, _flags, addr = sock.recvmsg_into([view], _RECV_CMSG_SPACE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if exc.errno not in _ONE_SHOT_RX_ERRORS:
                    raise
                # A queued ICMP error is reported once and belongs to no datagram: skip it.
                counters.rx_errors += 1
                continue
            counters.rx_syscalls += 1
            data = memoryview(bytes(view[:nbytes]))
            segment_size = 0
            pktinfo = b""
            for level, kind, payload in ancdata:
                if level == socket.SOL_UDP and kind == UDP_GRO and len(payload) >= _CMSG_INT.size:
                    segment_size = _CMSG_INT.unpack_from(payload)[0]
                elif kind == pktinfo_kind and level == pktinfo_level:
                    pktinfo = payload
            endpoint = self._endpoint(addr, pktinfo)
            if segment_size and nbytes > segment_size:
                counters.rx_coalesced_reads += 1
                segments = split_gro(data, segment_size)
                room = max_datagrams - len(out)
                out.extend((seg, endpoint) for seg in segments[:room])
                pending.extend((seg, endpoint) for seg in segments[room:])
                counters.rx_datagrams += len(segments)
            else:
                out.append((data, endpoint))
                counters.rx_datagrams += 1
        return out

    def _endpoint(
        self, addr: tuple[str, int] | tuple[str, int, int, int], pktinfo: bytes
    ) -> Endpoint:
        """The sender, cached by its address and the raw PKTINFO (parsed only on a miss)."""
        names = self._peer_names
        key = (addr, pktinfo)
        endpoint = names.get(key)
        if endpoint is None:
            if len(names) >= _ADDRESS_CACHE_MAX:
                names.clear()
            local = local_from_pktinfo(self._pktinfo_level, self._pktinfo_kind, pktinfo) or b""
            endpoint = names[key] = endpoint_from_sockaddr(addr, local)
        return endpoint

    # --- send ------------------------------------------------------------------------------

    def _sockaddr(self, endpoint: Endpoint) -> Endpoint:
        cache = self._sockaddrs
        addr = cache.get(endpoint)
        if addr is None:
            if len(cache) >= _ADDRESS_CACHE_MAX:
                cache.clear()
            addr = cache[endpoint] = sockaddr_for(endpoint, self.family)
        return addr

    def _source_cmsg(self, source: bytes) -> list[tuple[int, int, bytes]]:
        """The control messages that send from `source`; none for b"" (the kernel's choice)."""
        if not source:
            return []
        cache = self._source_cmsgs
        cmsg = cache.get(source)
        if cmsg is None:
            if len(cache) >= _ADDRESS_CACHE_MAX:
                cache.clear()
            cmsg = cache[source] = [source_cmsg(source, self.family)]
        return cmsg

    def send_batch(self, items: Sequence[tuple[Endpoint, Datagram]]) -> SendStats:
        """Send in order, as GSO batches where possible; stops early when the socket is full.
        A StickyEndpoint's datagrams leave from its local address."""
        stats = SendStats()
        batches = (
            plan_gso_batches(items)
            if self.gso_enabled
            else [
                GsoBatch(
                    dest, dest.local if type(dest) is StickyEndpoint else b"", len(data), [data]
                )
                for dest, data in items
            ]
        )
        for batch in batches:
            if not self._send_one_batch(batch, stats):
                stats.blocked = True
                break
        counters = self.counters
        counters.tx_datagrams += stats.sent
        counters.tx_dropped += stats.dropped
        counters.tx_syscalls += stats.syscalls
        return stats

    def _send_one_batch(self, batch: GsoBatch, stats: SendStats) -> bool:
        """False when the socket buffer is full (nothing more of this batch was sent)."""
        count = len(batch.datagrams)
        try:
            addr = self._sockaddr(batch.dest)
        except ValueError:  # not an IP endpoint: nothing to send it to
            stats.dropped += count
            stats.consumed += count
            return True
        source = self._source_cmsg(batch.source)
        if count > 1 and self.gso_enabled:
            cmsg = [(socket.SOL_UDP, UDP_SEGMENT, _CMSG_U16.pack(batch.segment_size))]
            try:
                self._sendmsg(batch.datagrams, cmsg, source, addr, stats)
            except (BlockingIOError, InterruptedError):
                return False
            except OSError as exc:
                if exc.errno == errno.EMSGSIZE:
                    # Segments larger than the path MTU: GSO cannot split them, but single
                    # sends may still go out (fragmented), so only this batch goes singly.
                    self.counters.gso_oversize += 1
                elif exc.errno in _GSO_REFUSED:
                    # This kernel or device will not segment for us: remember, go singly.
                    self.gso_enabled = False
                    self.counters.gso_fallbacks += 1
                else:
                    stats.dropped += count
                    stats.consumed += count
                    return True
            else:
                stats.sent += count
                stats.consumed += count
                stats.gso_batches += 1
                self.counters.tx_gso_batches += 1
                self.counters.tx_gso_datagrams += count
                return True
        return self._send_singly(batch.datagrams, addr, source, stats)

    def _sendmsg(
        self,
        datagrams: list[Datagram],
        cmsg: list[tuple[int, int, bytes]],
        source: list[tuple[int, int, bytes]],
        addr: Endpoint,
        stats: SendStats,
    ) -> None:
        """sendmsg from the `source` PKTINFO (if any); when the kernel refuses that address
        (removed since the peer wrote to it) once more without it, counted if that goes."""
        if source:
            try:
                stats.syscalls += 1
                self.sock.sendmsg(datagrams, cmsg + source, 0, addr)
            except OSError as exc:
                if exc.errno not in _SOURCE_REFUSED:
                    raise
            else:
                return
            stats.syscalls += 1
            self.sock.sendmsg(datagrams, cmsg, 0, addr)
            self.counters.tx_source_fallbacks += 1
            return
        stats.syscalls += 1
        self.sock.sendmsg(datagrams, cmsg, 0, addr)

    def _send_singly(
        self,
        datagrams: list[Datagram],
        addr: Endpoint,
        source: list[tuple[int, int, bytes]],
        stats: SendStats,
    ) -> bool:
        sendto = self.sock.sendto
        for data in datagrams:
            try:
                if source:
                    self._sendmsg([data], [], source, addr, stats)
                else:
                    stats.syscalls += 1
                    sendto(data, addr)
            except (BlockingIOError, InterruptedError):
                return False
            except OSError:  # unreachable network, firewall, bad address: drop this one
                stats.dropped += 1
            else:
                stats.sent += 1
            stats.consumed += 1
        return True


def set_socket_buffer(sock: socket.socket, option: int, force_option: int, size: int) -> int:
    """Set a socket buffer, beyond the sysctl cap when root; returns the size in force."""
    if size <= 0:
        raise ValueError(f"socket buffer size must be positive, got {size}")
    try:
        sock.setsockopt(socket.SOL_SOCKET, force_option, size)
    except PermissionError:  # not root: the kernel caps it at net.core.[rw]mem_max
        sock.setsockopt(socket.SOL_SOCKET, option, size)
    # The kernel doubles the value for bookkeeping; report the usable half.
    return sock.getsockopt(socket.SOL_SOCKET, option) // 2
