"""The UDP process: the socket on listen_port, GRO receive and GSO batched send.

Each received datagram goes to the crypto process with its sender and the local address it
arrived at (the ring header, framing.py); a datagram coming back for a sender the crypto
process remembers with that address leaves from it (udp_io.py: sticky source addresses).
"""

from __future__ import annotations

import logging
import select
import time
from collections.abc import Callable

from gateway.dataplane.framing import HEADER_SIZE, FramingError, decode_endpoint, encode_endpoint
from gateway.dataplane.handshake_gate import HANDSHAKE_TYPES, HandshakeGate
from gateway.dataplane.heartbeat import Heartbeat
from gateway.dataplane.sleeper import Sleeper
from gateway.endpoint import Endpoint
from gateway.telemetry import stats as st
from gateway.udp_io import UdpIo
from gateway.wireguard.cookie import Admission
from shm_ring.ring import Ring

log = logging.getLogger(__name__)

BATCH = 100
Outgoing = list[tuple[Endpoint, bytes | memoryview]]
MAX_UNSENT = 1000  # datagrams held while the socket buffer is full (one ring's worth)


def run_udp(  # noqa: PLR0913 # the process's resources; the key keyword-only
    udp: UdpIo,
    to_crypto: Ring,
    from_crypto: Ring,
    counters: memoryview,
    heartbeat: Heartbeat | None = None,
    *,
    public_key: Callable[[], bytes | None] = lambda: None,
) -> None:
    """Forever: socket -> to_crypto (while it has room), from_crypto -> socket.
    `public_key` is the interface's, for the handshake gate's MACs and cookies."""
    sleeper = Sleeper(consumers=[from_crypto], producers=[to_crypto], heartbeat=heartbeat)
    beat = sleeper.heartbeat.beat
    sock_fd = udp.fileno()
    max_payload = to_crypto.max_message - HEADER_SIZE  # a long datagram spans several slots
    c = counters
    unsent: Outgoing = []
    gate = HandshakeGate(public_key)
    while True:
        beat()
        busy = False
        room = to_crypto.free_slots()
        if room:
            # Never read more than fits: the rest waits in the socket buffer (backpressure).
            received = udp.recv_batch(min(BATCH, room))
            if received:
                busy = True
                replies: Outgoing = []
                messages = frame_received(
                    received, gate, max_payload, c, now=time.monotonic(), replies=replies
                )
                taken = to_crypto.send_many(messages)
                if taken < len(messages):
                    c[st.DROP_RING_FULL] += len(messages) - taken
                unsent = _hold(unsent, replies, c)  # the gate's cookie replies, sent below
        if unsent:
            unsent = _send(udp, unsent, c)
            busy = busy or not unsent
        if not unsent:
            batch = from_crypto.recv_many(BATCH)
            if batch:
                busy = True
                items: Outgoing = []
                for message in batch:
                    try:
                        items.append((decode_endpoint(message), message[HEADER_SIZE:]))
                    except FramingError:
                        c[st.DROP_MALFORMED] += 1
                left = _send(udp, items, c)
                # Keep what the full socket did not take; the ring slots are freed now.
                unsent = [(dest, bytes(data)) for dest, data in left[:MAX_UNSENT]]
                if len(left) > MAX_UNSENT:
                    c[st.DROP_UDP_SEND_FAILED] += len(left) - MAX_UNSENT
                from_crypto.release()
        if busy:
            continue
        blocked_in = not to_crypto.send_ready()
        events = 0 if blocked_in else select.EPOLLIN
        if unsent:
            events |= select.EPOLLOUT
        sleeper.watch(sock_fd, events)
        sleeper.sleep([] if unsent else [from_crypto], [to_crypto] if blocked_in else [])


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
        header = encode_endpoint(endpoint)
        if data and data[0] in HANDSHAKE_TYPES:
            verdict = gate.admit(header, data, now)
            if verdict is not Admission.ADMIT:
                c[_GATE_DROPS[verdict]] += 1
                if gate.reply is not None:
                    replies.append((endpoint, gate.reply))
                    c[st.COOKIE_REPLIES_SENT] += 1
                continue
        messages.append(header + data)
        c[st.UDP_RX_BYTES] += len(data)
    c[st.UDP_RX_PACKETS] += len(received)
    return messages


def _hold(unsent: Outgoing, more: Outgoing, c: memoryview) -> Outgoing:
    """`unsent` with as much of `more` as MAX_UNSENT allows; the rest counted as dropped."""
    room = MAX_UNSENT - len(unsent)
    if len(more) > room:
        c[st.DROP_UDP_SEND_FAILED] += len(more) - room
    return unsent + more[:room] if more else unsent


def _send(udp: UdpIo, items: Outgoing, c: memoryview) -> Outgoing:
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
