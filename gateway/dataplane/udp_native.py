"""The UDP process's per-batch work in native code: `gateway._native.udp_send_from_ring`
and `gateway._native.UdpReceiver`.

Send: one call takes a batch of the crypto ring's messages and sends them on the UdpIo's socket as
UdpIo.send_batch would (GSO runs, sticky PKTINFO sources, the same fallbacks), straight from
the ring slots, and returns what a full socket did not take. Receive: one call reads
datagrams (GRO super-datagrams cut natively) framed straight into the ring to crypto, up to
a handshake message, which comes back for the Python gate. `native_sender` and
`native_receiver` give them when the transport backend is native (transport.py's choice:
FIREZONE_GW_NO_EXTENSIONS=1 or no extension means the Python path) and the loop runs on a
real socket and shm ring.
"""

from __future__ import annotations

import socket

from gateway.dataplane.framing import decode_message
from gateway.dataplane.transport import BACKEND
from gateway.endpoint import Endpoint
from gateway.telemetry import stats as st
from gateway.udp_io import UdpIo
from shm_ring.ring import Ring


class NativeSender:
    """Sends ring batches for `udp` in native code, keeping its counters as Python does."""

    def __init__(self, udp: UdpIo, ring: Ring) -> None:
        from gateway import _native  # noqa: PLC0415 - only when chosen; may be missing

        self._send = _native.udp_send_from_ring
        self.udp = udp
        self.ring = ring
        self._v6 = udp.family == socket.AF_INET6

    def send(
        self, limit: int, c: memoryview
    ) -> tuple[int, list[tuple[Endpoint, bytes | memoryview]]] | None:
        """Up to `limit` messages of the ring sent and released; returns how many were taken
        and those the full socket did not take (to keep), or None when the next message is
        one for `Ring.recv_many` (several slots): the caller sends that batch in Python."""
        udp, ring = self.udp, self.ring
        figures, _blocked, foreign, udp.gso_enabled, unsent = self._send(
            udp.fileno(), self._v6, udp.gso_enabled, ring.memory(), limit
        )
        (taken, malformed, _consumed, sent, dropped, syscalls, gso_batches, gso_datagrams,
         fallbacks, oversize, gso_fallbacks, nbytes) = figures  # fmt: skip
        if not taken:
            return None if foreign else (0, [])
        ring.notify_producer()
        u = udp.counters
        u.tx_datagrams += sent
        u.tx_dropped += dropped
        u.tx_syscalls += syscalls
        u.tx_gso_batches += gso_batches
        u.tx_gso_datagrams += gso_datagrams
        u.tx_source_fallbacks += fallbacks
        u.gso_oversize += oversize
        u.gso_fallbacks += gso_fallbacks
        c[st.DROP_MALFORMED] += malformed
        c[st.UDP_SOURCE_FALLBACKS] += fallbacks
        c[st.UDP_TX_PACKETS] += sent
        c[st.GSO_BATCHES] += gso_batches
        c[st.GSO_SEGMENTS] += gso_datagrams
        c[st.DROP_UDP_SEND_FAILED] += dropped
        c[st.UDP_TX_BYTES] += nbytes
        left: list[tuple[Endpoint, bytes | memoryview]] = []
        for message in unsent:  # some only when the socket buffer was full
            left.append(decode_message(memoryview(message)))
        return taken, left


class NativeReceiver:
    """Receives for `udp` into `ring` in native code, keeping its counters as Python does."""

    def __init__(self, udp: UdpIo, ring: Ring) -> None:
        from gateway import _native  # noqa: PLC0415 - only when chosen; may be missing

        self._rx = _native.UdpReceiver()
        self.udp = udp
        self.ring = ring

    def receive(self, limit: int, max_payload: int, c: memoryview) -> tuple[int, bytes | None]:
        """Up to `limit` datagrams read; those for the ring framed into it, the too big
        dropped (counted). Returns how many datagrams were read and the message (header +
        datagram) that ended the batch, if one did: a handshake (for the gate) or one longer
        than a slot; it is counted in the first and not in the ring (the caller's)."""
        figures, message = self._rx.receive(
            self.udp.fileno(), self.ring.memory(), limit, max_payload
        )
        datagrams, framed, framed_bytes, too_big, syscalls, coalesced, errors = figures
        if framed:
            self.ring.notify_consumer()
        u = self.udp.counters
        u.rx_datagrams += datagrams
        u.rx_syscalls += syscalls
        u.rx_coalesced_reads += coalesced
        u.rx_errors += errors
        c[st.UDP_RX_PACKETS] += datagrams
        c[st.UDP_RX_BYTES] += framed_bytes
        c[st.DROP_TOO_BIG] += too_big
        return datagrams, message


def native_receiver(udp: object, ring: object, backend: str | None = None) -> NativeReceiver | None:
    """A NativeReceiver on the same terms as `native_sender`."""
    pair = _native_pair(udp, ring, backend)
    return NativeReceiver(*pair) if pair else None


def native_sender(udp: object, ring: object, backend: str | None = None) -> NativeSender | None:
    """A NativeSender when `backend` (default: transport.BACKEND) is native and the loop
    has a real socket and shm ring; None: the Python path."""
    pair = _native_pair(udp, ring, backend)
    return NativeSender(*pair) if pair else None


def _native_pair(udp: object, ring: object, backend: str | None) -> tuple[UdpIo, Ring] | None:
    """(udp, ring) when the native side may run on them, else None."""
    if (backend or BACKEND) == "native" and isinstance(udp, UdpIo) and isinstance(ring, Ring):
        return udp, ring
    return None
