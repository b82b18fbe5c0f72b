"""The transport path: sessions the core installs and the per-packet work on them.

Two implementations with one behaviour and one API (`Transport`): the native extension
`gateway._native` (Rust, gateway/native/) and the pure-Python fallback
(`transport_py.PyTransport`). `new_transport()` picks the native one unless
FIREZONE_GW_NO_EXTENSIONS=1 is set or the extension was not built (no Rust toolchain at
install); `BACKEND` says which, for the start-up log, `show` and `/metrics`.

The Device (the sans-I/O core) stays the authority: it installs a session when a handshake
completes, confirms a responder's session at its first packet, removes sessions it drops,
and tells the transport each peer's endpoint header and the session it may send on. The
transport guarantees only what must hold per packet: a send counter is never used twice,
no session is used after REJECT_AFTER_TIME or REJECT_AFTER_MESSAGES, the replay window,
and an inner packet's source belongs to its peer. The batch calls (`inbound`, `outbound`,
...) stop before any message they do not handle (handshakes, keepalives, unknown indices,
an endpoint change, no session): the caller hands that one to the Device and calls again,
so order holds. Drops they count and each session's figures are taken once per turn.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Protocol

from gateway.dataplane.transport_py import PyTransport
from gateway.wireguard.session_crypto import Buffer, Sessions
from shm_ring.ring import Ring

log = logging.getLogger(__name__)

NO_EXTENSIONS_ENV = "FIREZONE_GW_NO_EXTENSIONS"


class Transport(Sessions, Protocol):
    """Sessions (what the Device uses) plus the peers' send state, routes and batches."""

    name: str

    def set_peer(self, peer: int, endpoint: bytes | None, send_index: int | None) -> None: ...

    def remove_peer(self, peer: int) -> bool: ...

    def set_routes(self, routes: Sequence[tuple[bytes, int, int]]) -> None: ...

    def inbound(
        self, source: Ring, workers: Sequence[Ring], limit: int, now: float
    ) -> tuple[int, int]: ...

    def inbound_packets(
        self, source: Ring, limit: int, now: float, max_inner: int
    ) -> tuple[int, int, list[bytes]]: ...

    def outbound(
        self, source: Ring, dest: Ring, limit: int, now: float, mtu: int
    ) -> tuple[int, int]: ...

    def outbound_packets(
        self, packets: Sequence[Buffer], dest: Ring, now: float, mtu: int
    ) -> tuple[int, int]: ...

    def take_activity(self) -> list[tuple[int, int, int, int, int]]: ...

    def take_drops(self) -> list[int]: ...


class NativeTransport:
    """`gateway._native.Transport` behind the Python API: rings go in as their shared
    memory, and the rings native code published to or released are woken here."""

    name = "native"

    def __init__(self) -> None:
        from gateway import _native  # noqa: PLC0415 - only when chosen; may be missing

        self._t = _native.Transport()
        t = self._t
        self.install = t.install
        self.confirm = t.confirm
        self.remove = t.remove
        self.set_peer = t.set_peer
        self.remove_peer = t.remove_peer
        self.set_routes = t.set_routes
        self.send_counter = t.send_counter
        self.advance_send_counter = t.advance_send_counter
        self.set_send_limit = t.set_send_limit
        self.replay_window = t.replay_window
        self.load_replay_window = t.load_replay_window
        self.seal = t.seal
        self.open = t.open
        self.take_activity = t.take_activity
        self.take_drops = t.take_drops

    def inbound(
        self, source: Ring, workers: Sequence[Ring], limit: int, now: float
    ) -> tuple[int, int]:
        taken, stop = self._t.inbound(source.memory(), [w.memory() for w in workers], limit, now)
        if taken:
            source.notify_producer()
            for ring in workers:
                ring.notify_consumer()
        return taken, stop

    def inbound_packets(
        self, source: Ring, limit: int, now: float, max_inner: int
    ) -> tuple[int, int, list[bytes]]:
        found = self._t.inbound_packets(source.memory(), limit, now, max_inner)
        if found[0]:
            source.notify_producer()
        return found

    def outbound(
        self, source: Ring, dest: Ring, limit: int, now: float, mtu: int
    ) -> tuple[int, int]:
        taken, stop = self._t.outbound(source.memory(), dest.memory(), limit, now, mtu)
        if taken:
            source.notify_producer()
            dest.notify_consumer()
        return taken, stop

    def outbound_packets(
        self, packets: Sequence[bytes | bytearray | memoryview], dest: Ring, now: float, mtu: int
    ) -> tuple[int, int]:
        taken, stop = self._t.outbound_packets(list(packets), dest.memory(), now, mtu)
        if taken:
            dest.notify_consumer()
        return taken, stop


def batches_for(sessions: object) -> Transport | None:
    """The Transport behind a Device's sessions when it runs batches (None: a Device built
    with the Python sessions alone, as unit tests do)."""
    return sessions if isinstance(sessions, NativeTransport | PyTransport) else None


def _choose() -> tuple[str, str]:
    """(backend name, why) for this process."""
    if os.environ.get(NO_EXTENSIONS_ENV, "") not in ("", "0"):
        return "python", f"{NO_EXTENSIONS_ENV} is set"
    try:
        from gateway import _native  # noqa: F401, PLC0415 - probing for the extension
    except ImportError as exc:
        return "python", f"the native extension is not built ({exc})"
    return "native", "gateway._native"


BACKEND, BACKEND_REASON = _choose()


def new_transport(backend: str | None = None) -> Transport:
    """A transport of `backend` ("native" or "python"; default: the one chosen at import)."""
    chosen = backend or BACKEND
    if chosen == "native":
        return NativeTransport()
    if chosen == "python":
        return PyTransport()
    raise ValueError(f"unknown transport backend {chosen!r}")


def log_backend() -> None:
    """Say once, at start, which per-packet path runs."""
    if BACKEND == "native":
        log.info("per-packet path: native (%s)", BACKEND_REASON)
    else:
        log.warning("per-packet path: pure Python, slower (%s)", BACKEND_REASON)
