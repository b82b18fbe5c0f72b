"""The UDP process: the socket on listen_port, GRO receive and GSO batched send.

Each received datagram goes to the crypto process with its sender and the local address it
arrived at (the ring header, framing.py); a datagram coming back for a sender the crypto
process remembers with that address leaves from it (udp_io.py: sticky source addresses).

`UdpLoop.turn` is that work, one pass that never waits, on any `UdpSocket` and any rings
with the `PacketRing` methods (tests drive it with a fake socket and in-memory rings);
`run_udp` only turns it and sleeps in epoll.
"""

from __future__ import annotations

import logging
import select
import time
from collections.abc import Callable, Sequence
from typing import Generic, Protocol

from gateway.dataplane.framing import (
    HEADER_SIZE,
    FramingError,
    decode_endpoint,
    decode_message,
    encode_message,
)
from gateway.dataplane.handshake_gate import HandshakeGate
from gateway.dataplane.heartbeat import Heartbeat
from gateway.dataplane.rings import RingT
from gateway.dataplane.sleeper import Sleeper
from gateway.dataplane.udp_native import NativeReceiver, native_receiver, native_sender
from gateway.endpoint import Endpoint
from gateway.telemetry import stats as st
from gateway.udp_io import Datagram, SendStats, UdpCounters, UdpIo
from gateway.wireguard.constants import HANDSHAKE_MESSAGES
from gateway.wireguard.cookie import Admission
from shm_ring.ring import Ring

log = logging.getLogger(__name__)

BATCH = 100
Outgoing = list[tuple[Endpoint, bytes | memoryview]]
MAX_UNSENT = 1000  # datagrams held while the socket buffer is full (one ring's worth)


class UdpSocket(Protocol):
    """What the UDP loop uses of a socket: gateway.udp_io.UdpIo, or a fake in tests."""

    @property
    def counters(self) -> UdpCounters: ...

    def recv_batch(self, max_datagrams: int) -> list[tuple[memoryview, Endpoint]]: ...

    def send_batch(self, items: Sequence[tuple[Endpoint, Datagram]]) -> SendStats: ...


class UdpLoop(Generic[RingT]):
    """The socket and its two rings, one turn at a time, with the clock passed in.

    Datagrams the full socket buffer did not take wait in `unsent` (at most MAX_UNSENT, the
    rest dropped and counted); while any wait, nothing more is read from the crypto ring.
    """

    def __init__(  # noqa: PLR0913 # the process's resources; the backend keyword-only
        self,
        udp: UdpSocket,
        to_crypto: RingT,
        from_crypto: RingT,
        counters: memoryview,
        public_key: Callable[[], bytes | None] = lambda: None,
        *,
        backend: str | None = None,
    ):
        """`public_key` is the interface's, for the handshake gate's MACs and cookies;
        `backend` the send path's ("native" or "python", default transport.py's choice;
        native needs a real UdpIo and shm ring, else Python sends)."""
        self.udp = udp
        self.to_crypto = to_crypto
        self.from_crypto = from_crypto
        self.counters = counters
        self.unsent: Outgoing = []
        self.gate = HandshakeGate(public_key)
        self._max_payload = to_crypto.max_message - HEADER_SIZE  # a long one spans slots
        self._native = native_sender(udp, from_crypto, backend)
        self._native_rx = native_receiver(udp, to_crypto, backend)

    def turn(self, now: float) -> bool:
        """socket -> to_crypto (only as much as it has room for), from_crypto (or what
        waits unsent) -> socket; True if anything moved (then more may wait)."""
        received = self._receive(now)
        sent = self._send_unsent()
        if not self.unsent and self._send_from_crypto():
            sent = True
        return received or sent

    def inbound_blocked(self) -> bool:
        """Whether the ring to the crypto process is full (then leave the socket unread)."""
        return not self.to_crypto.send_ready()

    def _receive(self, now: float) -> bool:
        room = self.to_crypto.free_slots()
        if not room:
            return False
        # Never read more than fits: the rest waits in the socket buffer (backpressure).
        limit = min(BATCH, room)
        c = self.counters
        replies: Outgoing = []
        if self._native_rx is not None:
            if not self._receive_native(self._native_rx, limit, now, replies):
                return False
        else:
            received = self.udp.recv_batch(limit)
            if not received:
                return False
            messages = frame_received(
                received, self.gate, self._max_payload, c, now=now, replies=replies
            )
            taken = self.to_crypto.send_many(messages)
            if taken < len(messages):
                c[st.DROP_RING_FULL] += len(messages) - taken
        if replies:  # the gate's cookie replies, sent with what waits (_send_unsent)
            room = MAX_UNSENT - len(self.unsent)
            self.unsent += replies[:room]
            if len(replies) > room:
                c[st.DROP_UDP_SEND_FAILED] += len(replies) - room
        return True

    def _receive_native(
        self, rx: NativeReceiver, limit: int, now: float, replies: Outgoing
    ) -> bool:
        """Native reads straight into the ring; each message it stops at (a handshake for
        the gate, or one longer than a slot) is handled here, in order. True if any
        datagram was read."""
        c = self.counters
        read = 0
        while read < limit:
            count, stopped_at = rx.receive(limit - read, self._max_payload, c)
            read += count
            if stopped_at is None:
                break
            data = memoryview(stopped_at)[HEADER_SIZE:]
            message: bytes | None = stopped_at
            if data and data[0] in HANDSHAKE_MESSAGES:
                message = admit(stopped_at, data, self.gate, c, now=now, replies=replies)
            else:
                c[st.UDP_RX_BYTES] += len(data)
            if message is not None and not self.to_crypto.send_many([message]):
                c[st.DROP_RING_FULL] += 1
        return read > 0

    def _send_unsent(self) -> bool:
        """Try what waits again; True once all of it has left."""
        if not self.unsent:
            return False
        self.unsent = _send(self.udp, self.unsent, self.counters)
        return not self.unsent

    def _send_from_crypto(self) -> bool:
        if self._native is not None:
            found = self._native.send(BATCH, self.counters)
            if found is not None:  # else the next message spans slots: Python's recv_many
                taken, left = found
                self._keep_unsent(left)
                return taken > 0
        batch = self.from_crypto.recv_many(BATCH)
        if not batch:
            return False
        c = self.counters
        items: Outgoing = []
        for message in batch:
            try:
                items.append(decode_message(message))
            except FramingError:
                c[st.DROP_MALFORMED] += 1
        left = _send(self.udp, items, c)
        # Keep what the full socket did not take; the ring slots are freed now.
        self._keep_unsent([(dest, bytes(data)) for dest, data in left])
        self.from_crypto.release()
        return True

    def _keep_unsent(self, left: Outgoing) -> None:
        self.unsent = left[:MAX_UNSENT]
        if len(left) > MAX_UNSENT:
            self.counters[st.DROP_UDP_SEND_FAILED] += len(left) - MAX_UNSENT


def run_udp(  # noqa: PLR0913 # the process's resources; the key keyword-only
    udp: UdpIo,
    to_crypto: Ring,
    from_crypto: Ring,
    counters: memoryview,
    heartbeat: Heartbeat | None = None,
    *,
    public_key: Callable[[], bytes | None] = lambda: None,
) -> None:
    """Forever: turn the loop while it finds work, else sleep in epoll on the socket (for
    reading unless the ring to crypto is full, for writing while datagrams wait) and the
    rings. `public_key` is the interface's, for the handshake gate."""
    loop = UdpLoop(udp, to_crypto, from_crypto, counters, public_key)
    sleeper = Sleeper(consumers=[from_crypto], producers=[to_crypto], heartbeat=heartbeat)
    beat = sleeper.heartbeat.beat
    sock_fd = udp.fileno()
    turn = loop.turn
    monotonic = time.monotonic
    while True:
        beat()
        if turn(monotonic()):
            continue
        blocked_in = loop.inbound_blocked()
        events = 0 if blocked_in else select.EPOLLIN
        if loop.unsent:
            events |= select.EPOLLOUT
        sleeper.watch(sock_fd, events)
        sleeper.sleep([] if loop.unsent else [from_crypto], [to_crypto] if blocked_in else [])


_GATE_DROPS = {
    Admission.MALFORMED: st.DROP_MALFORMED,
    Admission.BAD_MAC1: st.DROP_MAC1_INVALID,
    Admission.COOKIE: st.DROP_COOKIE_REQUIRED,
    Admission.COOKIE_LIMITED: st.DROP_COOKIE_REQUIRED,
    Admission.RATE_LIMITED: st.DROP_RATE_LIMITED,
}


def frame_received(  # noqa: PLR0913 # the batch, the gate, and where results go
    received: list[tuple[memoryview, tuple[str, int]]],
    gate: HandshakeGate,
    max_payload: int,
    c: memoryview,
    *,
    now: float,
    replies: Outgoing,
) -> list[bytes]:
    """Datagrams read from the socket as ring messages (endpoint header + datagram), without
    those too big for a slot and the handshake messages the gate turns away (both counted);
    the gate's cookie replies go to `replies`."""
    messages = []
    for data, endpoint in received:
        if len(data) > max_payload:
            c[st.DROP_TOO_BIG] += 1
            continue
        message = encode_message(endpoint, data)
        if data and data[0] in HANDSHAKE_MESSAGES:
            if admit(message, data, gate, c, now=now, replies=replies, endpoint=endpoint) is None:
                continue
        else:
            c[st.UDP_RX_BYTES] += len(data)
        messages.append(message)
    c[st.UDP_RX_PACKETS] += len(received)
    return messages


def admit(  # noqa: PLR0913 # the message, the gate, and where results go
    message: bytes,
    data: memoryview,
    gate: HandshakeGate,
    c: memoryview,
    *,
    now: float,
    replies: Outgoing,
    endpoint: Endpoint | None = None,
) -> bytes | None:
    """A handshake message (header + datagram) through the gate: the message when admitted
    (its bytes counted), else None with the drop counted and any cookie reply queued."""
    verdict = gate.admit(message, data, now)
    if verdict is not Admission.ADMIT:
        c[_GATE_DROPS[verdict]] += 1
        if gate.reply is not None:
            replies.append((endpoint or decode_endpoint(message), gate.reply))
            c[st.COOKIE_REPLIES_SENT] += 1
        return None
    c[st.UDP_RX_BYTES] += len(data)
    return message


def _send(udp: UdpSocket, items: Outgoing, c: memoryview) -> Outgoing:
    """Send items in order; returns those the full socket buffer did not take."""
    gso_before = udp.counters.tx_gso_datagrams
    fallbacks_before = udp.counters.tx_source_fallbacks
    result = udp.send_batch(items)
    c[st.UDP_SOURCE_FALLBACKS] += udp.counters.tx_source_fallbacks - fallbacks_before
    c[st.UDP_TX_PACKETS] += result.sent
    c[st.GSO_BATCHES] += result.gso_batches
    c[st.GSO_SEGMENTS] += udp.counters.tx_gso_datagrams - gso_before
    if result.dropped:
        c[st.DROP_UDP_SEND_FAILED] += result.dropped
    c[st.UDP_TX_BYTES] += sum(len(d) for _, d in items[: result.consumed])
    return items[result.consumed :] if result.blocked else []
