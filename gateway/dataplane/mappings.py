"""Proxy mappings from the DNS process to the crypto process, and what comes back.

The supervisor makes a SOCK_SEQPACKET socketpair before it forks the two; it keeps both ends,
so the channel outlives either process. DNS -> crypto: each record is a msgpack list of up to
MAX_BATCH `MappingMessage`s (a sequence number, the resource's index in the config, the proxy
pair, at most MAX_REAL_ADDRESSES real addresses per family): the mappings of one loop turn.
Crypto -> DNS, msgpack tagged records:
`Applied(n)` once per batch it applied (every mapping up to n is in its ProxyHandler);
`Started` when a crypto process starts (it has no mappings: the DNS process sends all its live
ones again, and answers from its cache only after they are applied); `PeerAddresses`, the
peers' public keys and allowed IPs, at start and whenever `wg set` or a reload changed them
(the DNS process answers only peers, and grants follow keys, not the config's addresses).

The DNS process never waits on this socket: `MappingSender.send` queues a record and returns;
`when_applied(callback)` runs the callback once every mapping sent before it is applied, or
after ACK_TIMEOUT (counted), so answers leave in the order their queries came and a peer's
first packet to a proxy address finds its translation. Many mappings are in flight at once:
the crypto process applies all waiting records in one look (it looks every few milliseconds
even under traffic, cryptoproc.run_crypto) and acknowledges the batch once. A malformed record
is logged and skipped on either side.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Annotated

import msgspec

from gateway.dns.resources import ProxyMapping
from gateway.ipnet import IPNetwork
from gateway.nat.handler import MAX_REAL_ADDRESSES, ProxyHandler, Target
from gateway.wireguard.device import Device

if TYPE_CHECKING:
    import asyncio  # the DNS process's loop; the crypto process needs none

log = logging.getLogger(__name__)

ACK_TIMEOUT = 0.5  # seconds the DNS process waits before answering anyway
MAX_BATCH = 64  # mappings in one record; a full mapping is about 400 bytes
MAX_MESSAGE_BYTES = 32768
MAX_FROM_CRYPTO_BYTES = 1 << 18  # a peer table: about 80 bytes a peer (the socket's limit)
MAX_BACKLOG = 1 << 17  # records waiting for room in the socket (all live mappings fit)

V4 = Annotated[bytes, msgspec.Meta(min_length=4, max_length=4)]
V6 = Annotated[bytes, msgspec.Meta(min_length=16, max_length=16)]
Count = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
PublicKey = Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]


class MappingMessage(msgspec.Struct, frozen=True):
    sequence: Count
    resource: Count
    proxy_v4: V4
    proxy_v6: V6
    real_v4: Annotated[tuple[V4, ...], msgspec.Meta(max_length=MAX_REAL_ADDRESSES)]
    real_v6: Annotated[tuple[V6, ...], msgspec.Meta(max_length=MAX_REAL_ADDRESSES)]


class Applied(msgspec.Struct, frozen=True, tag="applied"):
    sequence: Count  # every mapping up to this one is applied


class Started(msgspec.Struct, frozen=True, tag="started"):
    """A crypto process started: it holds no mappings."""


class PeerAddresses(msgspec.Struct, frozen=True, tag="peers"):
    peers: tuple[tuple[PublicKey, tuple[str, ...]], ...]  # key, allowed IPs ("10.0.0.2/32")


FromCrypto = Applied | Started | PeerAddresses
PeerTable = list[tuple[bytes, list[IPNetwork]]]


class MappingPair:
    """The socketpair, made by the supervisor before it forks the DNS and crypto processes."""

    def __init__(self, dns: socket.socket, crypto: socket.socket) -> None:
        self.dns = dns
        self.crypto = crypto

    @classmethod
    def create(cls) -> MappingPair:
        dns, crypto = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        dns.setblocking(False)
        crypto.setblocking(False)
        return cls(dns, crypto)

    def close(self) -> None:
        self.dns.close()
        self.crypto.close()


_encoder = msgspec.msgpack.Encoder()
Batch = Annotated[list[MappingMessage], msgspec.Meta(max_length=MAX_BATCH)]
_decoder: msgspec.msgpack.Decoder[list[MappingMessage]] = msgspec.msgpack.Decoder(Batch)
_from_crypto: msgspec.msgpack.Decoder[FromCrypto] = msgspec.msgpack.Decoder(FromCrypto)


def message(sequence: int, mapping: ProxyMapping) -> MappingMessage:
    return MappingMessage(
        sequence=sequence,
        resource=mapping.resource,
        proxy_v4=mapping.proxies.v4.packed,
        proxy_v6=mapping.proxies.v6.packed,
        real_v4=tuple(a.packed for a in mapping.real_v4[:MAX_REAL_ADDRESSES]),
        real_v6=tuple(a.packed for a in mapping.real_v6[:MAX_REAL_ADDRESSES]),
    )


def encode(sequence: int, mapping: ProxyMapping) -> bytes:
    """One record holding one mapping (records hold up to MAX_BATCH)."""
    return _encoder.encode([message(sequence, mapping)])


# ---- the DNS process's end -----------------------------------------------------------------


class MappingSender:
    """Sends mappings without waiting; runs callbacks once what was sent before is applied.

    `attach(loop)` watches the socket in an asyncio loop; without it, call `receive()` and
    `expire(now)` yourself (tests). `on_started` is called when a new crypto process says it
    started (send the live mappings again); `on_peers` with each peer table it sends."""

    def __init__(
        self,
        sock: socket.socket,
        *,
        timeout: float = ACK_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        sock.setblocking(False)
        self._sock = sock
        self._timeout = timeout
        self._clock = clock
        self._sequence = 0
        self._applied = 0
        self._unsent: list[MappingMessage] = []  # packed into records once per loop turn
        self._backlog: deque[bytes] = deque()
        self._waiters: deque[tuple[int, float, Callable[[], None]]] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.on_started: Callable[[], None] | None = None
        self.on_peers: Callable[[PeerTable], None] | None = None
        self.sent = 0
        self.unacknowledged = 0  # answers that left without their mapping's acknowledgement
        self.dropped = 0  # records dropped with the backlog full
        self._buffer = bytearray(MAX_FROM_CRYPTO_BYTES)

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        loop.add_reader(self._sock.fileno(), self.receive)

    def detach(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self._sock.fileno())
            self._loop.remove_writer(self._sock.fileno())
            if self._timer is not None:
                self._timer.cancel()
        self._loop = None

    @property
    def in_flight(self) -> int:
        return self._sequence - self._applied

    def send(self, mapping: ProxyMapping) -> None:
        """Queue `mapping`; it leaves with the others sent in this loop turn (one record per
        MAX_BATCH: a system call each, not one per mapping)."""
        self._sequence += 1
        self.sent += 1
        self._unsent.append(message(self._sequence, mapping))
        if self._loop is None:
            self._pack()
        elif len(self._unsent) == 1:
            self._loop.call_soon(self._pack)

    def _pack(self) -> None:
        unsent, self._unsent = self._unsent, []
        for start in range(0, len(unsent), MAX_BATCH):
            if len(self._backlog) >= MAX_BACKLOG:
                self._backlog.popleft()
                self.dropped += 1
            self._backlog.append(_encoder.encode(unsent[start : start + MAX_BATCH]))
        self.flush()

    def when_applied(self, callback: Callable[[], None]) -> None:
        """Run `callback` once every mapping sent so far is applied (at once if it is)."""
        if self._applied >= self._sequence and not self._waiters:
            callback()
            return
        deadline = self._clock() + self._timeout
        self._waiters.append((self._sequence, deadline, callback))
        self._arm(deadline)

    def flush(self) -> None:
        """Send what waits for room in the socket (attached: when the loop sees room)."""
        while self._backlog:
            try:
                self._sock.send(self._backlog[0])
            except BlockingIOError:
                if self._loop is not None:
                    self._loop.add_writer(self._sock.fileno(), self.flush)
                return
            except OSError as exc:
                log.warning("proxy mapping not sent to the crypto process: %s", exc)
            self._backlog.popleft()
        if self._loop is not None:
            self._loop.remove_writer(self._sock.fileno())

    def receive(self) -> None:
        """Read what the crypto process sent (never waits)."""
        while True:
            try:
                size = self._sock.recv_into(self._buffer)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                log.warning("reading from the crypto process: %s", exc)
                break
            if not size:
                break
            try:
                message = _from_crypto.decode(memoryview(self._buffer)[:size])
            except msgspec.DecodeError as exc:
                log.error("ignored a record from the crypto process: %s", exc)
                continue
            if isinstance(message, Applied):
                self._applied = max(self._applied, min(message.sequence, self._sequence))
                self.flush()
            elif isinstance(message, Started):
                log.info("crypto process (re)started: sending it the live proxy mappings")
                if self.on_started is not None:
                    self.on_started()
            elif self.on_peers is not None:
                self.on_peers(_peer_table(message))
        self._release(self._clock())

    def expire(self, now: float) -> None:
        """Run the callbacks whose mappings were not acknowledged in time."""
        self._release(now)

    def _release(self, now: float) -> None:
        waiters = self._waiters
        while waiters and (waiters[0][0] <= self._applied or waiters[0][1] <= now):
            sequence, _, callback = waiters.popleft()
            if sequence > self._applied:
                self.unacknowledged += 1
            callback()
        if waiters:
            self._arm(waiters[0][1])

    def _arm(self, deadline: float) -> None:
        if self._loop is None or (self._timer is not None and not self._timer.cancelled()):
            return
        delay = max(0.0, deadline - self._clock())
        self._timer = self._loop.call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._release(self._clock())


def _peer_table(message: PeerAddresses) -> PeerTable:
    table: PeerTable = []
    for key, networks in message.peers:
        parsed = []
        for text in networks:
            try:
                parsed.append(ipaddress.ip_network(text))
            except ValueError:
                log.error("ignored allowed IP %r from the crypto process", text)
        table.append((key, parsed))
    return table


# ---- the crypto process's end --------------------------------------------------------------


def apply_message(handler: ProxyHandler, message: MappingMessage) -> None:
    handler.apply(
        ipaddress.IPv4Address(message.proxy_v4),
        ipaddress.IPv6Address(message.proxy_v6),
        Target(
            message.resource,
            tuple(ipaddress.IPv4Address(a) for a in message.real_v4),
            tuple(ipaddress.IPv6Address(a) for a in message.real_v6),
        ),
    )


def receive_mappings(sock: socket.socket, apply: Callable[[MappingMessage], None]) -> int:
    """The crypto process's end: apply every waiting mapping, then acknowledge the batch in
    one record; returns how many were applied."""
    applied = 0
    last = -1
    while True:
        try:
            data = sock.recv(MAX_MESSAGE_BYTES)
        except BlockingIOError:
            break
        if not data:
            break
        try:
            batch = _decoder.decode(data)
        except msgspec.DecodeError as exc:
            log.error("ignored a proxy mapping record: %s", exc)
            continue
        for mapping in batch:
            apply(mapping)
            last = max(last, mapping.sequence)
        applied += len(batch)
    if last >= 0:
        _send(sock, Applied(last), "proxy mappings not acknowledged")
    return applied


class PeerAnnouncer:
    """The crypto process tells the DNS process it started, and who the peers are whenever
    their allowed IPs change (`check` after `wg set` and reloads: one integer compared)."""

    def __init__(self, sock: socket.socket, device: Device) -> None:
        self._sock = sock
        self._device = device
        self._sent_version: int | None = None

    def started(self) -> None:
        _send(self._sock, Started(), "the DNS process not told of the start")
        self.check()

    def started_watching(
        self, handlers: Mapping[int, Callable[[float], None]]
    ) -> dict[int, Callable[[float], None]]:
        """`started()`, and the crypto loop's fd handlers, each followed by `check()` (the
        `wg` socket and the supervisor's reloads are what change peers)."""
        self.started()

        def then_check(handler: Callable[[float], None]) -> Callable[[float], None]:
            def handle(now: float) -> None:
                handler(now)
                self.check()

            return handle

        return {fd: then_check(handler) for fd, handler in handlers.items()}

    def check(self) -> None:
        version = self._device.routes_version
        if version == self._sent_version:
            return
        self._sent_version = version
        table = tuple(
            (peer.public_key, tuple(str(n) for n in peer.allowed_ips))
            for peer in self._device.peers()
        )
        _send(self._sock, PeerAddresses(table), "the DNS process not told of the peers")


def _send(sock: socket.socket, message: FromCrypto, failure: str) -> None:
    try:
        sock.send(_encoder.encode(message))
    except OSError as exc:  # the DNS process answers after its timeout
        log.warning("%s: %s", failure, exc)
