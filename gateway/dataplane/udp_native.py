"""The UDP process's send side in native code: `gateway._native.udp_send_from_ring`.

One call takes a batch of the crypto ring's messages and sends them on the UdpIo's socket as
UdpIo.send_batch would (GSO runs, sticky PKTINFO sources, the same fallbacks), straight from
the ring slots, and returns what a full socket did not take. `native_sender` gives one
when the transport backend is native (transport.py's choice: FIREZONE_GW_NO_EXTENSIONS=1
or no extension means the Python path) and the loop runs on a real socket and shm ring.
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


def native_sender(udp: object, ring: object, backend: str | None = None) -> NativeSender | None:
    """A NativeSender when `backend` (default: transport.BACKEND) is native and the loop
    has a real socket and shm ring; None: the Python path."""
    if (backend or BACKEND) != "native":
        return None
    if not isinstance(udp, UdpIo) or not isinstance(ring, Ring):
        return None
    return NativeSender(udp, ring)
