"""The per-packet transport path in pure Python: the fallback of the native extension
(gateway/native, `gateway._native.Transport`), with the same behaviour and the same API.

It holds what Python installs (sessions by our receiver index, each peer's endpoint header
and the session it may send on, the allowed-IPs routes) and works on shm_ring rings. See
`gateway/dataplane/transport.py` for the contract both implement;
`tests/test_transport_differential.py` feeds both the same batches and compares them.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from gateway.dataplane.flow import flow_worker
from gateway.wireguard.allowedips import CACHE_MAX_ENTRIES, _FamilyTable
from gateway.wireguard.constants import (
    MAX_TRANSPORT_SIZE,
    REJECT_AFTER_MESSAGES,
    REJECT_AFTER_TIME,
    TRANSPORT_OVERHEAD,
)
from gateway.wireguard.device import inner_source, padded_size
from gateway.wireguard.session_crypto import OPENED, REPLAYED, PySessions
from shm_ring.ring import Ring

HEADER_SIZE = 36  # the endpoint header (gateway/dataplane/framing.py)
DONE, PUNT, FULL = 0, 1, 2
# Indices of take_drops().
D_DECRYPT, D_REPLAY, D_EXPIRED, D_MALFORMED_INNER, D_SPOOFED, D_RING_FULL = range(6)
_TRANSPORT = struct.Struct("<IIQ")
_TRANSPORT_TYPE = b"\x04\x00\x00\x00"
_IPV4, _IPV6 = 4, 6
_IPV4_HEADER, _IPV6_HEADER = 20, 40
_V4_BITS, _V6_BITS = 32, 128


class _Routes:
    """allowedips' per-length tables, keyed by raw address bytes, with its bounded cache of
    results (a few busy addresses are most lookups)."""

    def __init__(self) -> None:
        self.v4: _FamilyTable[int] = _FamilyTable(_V4_BITS)
        self.v6: _FamilyTable[int] = _FamilyTable(_V6_BITS)
        self._cache: dict[bytes, int | None] = {}

    def insert(self, address: bytes, plen: int, peer: int) -> bool:
        table = {4: self.v4, 16: self.v6}.get(len(address))
        if table is None or not 0 <= plen <= table.bits:
            return False
        table.insert(plen, int.from_bytes(address, "big") >> (table.bits - plen), peer)
        return True

    def lookup(self, address: bytes | bytearray | memoryview) -> int | None:
        key = bytes(address)
        cache = self._cache
        if key in cache:
            return cache[key]
        table = {4: self.v4, 16: self.v6}.get(len(key))
        found = None if table is None else table.lookup(int.from_bytes(key, "big"))
        if len(cache) >= CACHE_MAX_ENTRIES:
            cache.clear()
        cache[key] = found
        return found


def _punt_if_any(source: Ring) -> int:
    """While a message of several slots waits, every message is Python's (as native code
    leaves them): PUNT if there is one, DONE if the ring is empty."""
    waiting = bool(source.recv_many(1))
    source.release(0)  # give it back
    return PUNT if waiting else DONE


class PyTransport(PySessions):
    """Sessions, peers' send state and routes, and the batches over rings (see module doc)."""

    name = "python"

    def __init__(self) -> None:
        super().__init__()
        self._peers: dict[int, tuple[bytes | None, int | None]] = {}
        self._routes = _Routes()
        self._drops = [0] * 6

    # ---- what Python installs -------------------------------------------------------------

    def set_peer(self, peer: int, endpoint: bytes | None, send_index: int | None) -> None:
        if endpoint is not None and len(endpoint) != HEADER_SIZE:
            raise ValueError("an endpoint header is 36 bytes")
        self._peers[peer] = (endpoint, send_index)

    def remove_peer(self, peer: int) -> bool:
        return self._peers.pop(peer, None) is not None

    def set_routes(self, routes: Sequence[tuple[bytes, int, int]]) -> None:
        table = _Routes()
        for address, plen, peer in routes:
            if not table.insert(address, plen, peer):
                raise ValueError("a route is a 4- or 16-byte address and its prefix length")
        self._routes = table

    # ---- batches ---------------------------------------------------------------------------

    def _inbound_one(  # noqa: PLR0911 - one exit per decision, as fastpath.rs
        self, message: memoryview, now: float, max_inner: int
    ) -> bytearray | int | None:
        """The inner packet, PUNT, or None (dropped and counted)."""
        size = len(message) - HEADER_SIZE
        if size < TRANSPORT_OVERHEAD or message[0] not in (_IPV4, _IPV6):
            return PUNT
        if message[HEADER_SIZE : HEADER_SIZE + 4] != _TRANSPORT_TYPE or size > MAX_TRANSPORT_SIZE:
            return PUNT
        body = size - TRANSPORT_OVERHEAD
        if not 0 < body <= max_inner:
            return PUNT
        _, local, counter = _TRANSPORT.unpack_from(message, HEADER_SIZE)
        session = self._sessions.get(local)
        if session is None:
            return PUNT
        endpoint = self._peers.get(session.peer, (None, None))[0]
        if not session.confirmed or endpoint is None or message[:HEADER_SIZE] != endpoint:
            return PUNT
        drops = self._drops
        if now - session.created >= REJECT_AFTER_TIME or counter >= REJECT_AFTER_MESSAGES:
            drops[D_EXPIRED] += 1
            return None
        out = bytearray(body)
        status = self._open(session, message[HEADER_SIZE:], out)
        if status != OPENED:
            drops[D_REPLAY if status == REPLAYED else D_DECRYPT] += 1
            return None
        session.rx_packets += 1
        session.rx_bytes += size
        self._touched.setdefault(local, session)
        found = inner_source(out)
        if found is None:
            drops[D_MALFORMED_INNER] += 1
            return None
        length, source = found
        if self._routes.lookup(source) != session.peer:
            drops[D_SPOOFED] += 1
            return None
        del out[length:]
        return out

    def inbound(
        self, source: Ring, workers: Sequence[Ring], limit: int, now: float
    ) -> tuple[int, int]:
        """Up to `limit` messages of the UDP ring into the workers' rings by flow; returns
        (messages taken, DONE or PUNT: the next message is Python's, left in the ring)."""
        max_inner = min(ring.stride for ring in workers)
        per_worker: list[list[bytes | bytearray]] = [[] for _ in workers]
        taken, stop = self._inbound(source, limit, now, max_inner, per_worker)
        for ring, packets in zip(workers, per_worker, strict=True):
            if packets:
                self._drops[D_RING_FULL] += len(packets) - ring.send_many(packets)
        return taken, stop

    def inbound_packets(
        self, source: Ring, limit: int, now: float, max_inner: int
    ) -> tuple[int, int, list[bytes]]:
        """As `inbound`, but the inner packets come back (for the firewall)."""
        found: list[list[bytes | bytearray]] = [[]]
        taken, stop = self._inbound(source, limit, now, max_inner, found)
        return taken, stop, [bytes(p) for p in found[0]]

    def _inbound(
        self,
        source: Ring,
        limit: int,
        now: float,
        max_inner: int,
        sinks: list[list[bytes | bytearray]],
    ) -> tuple[int, int]:
        if source.spanning_pending():
            return 0, _punt_if_any(source)
        batch = source.recv_many(limit)
        stride, taken, stop, workers = source.stride, 0, DONE, len(sinks)
        for message in batch:
            if not 0 < len(message) <= stride:
                stop = PUNT
                break
            inner = self._inbound_one(message, now, max_inner)
            if inner is PUNT:
                stop = PUNT
                break
            if isinstance(inner, bytearray):
                sinks[flow_worker(inner, workers)].append(inner)
            taken += 1
        del batch
        source.release(taken)
        return taken, stop

    def _outbound_one(
        self,
        packet: bytes | bytearray | memoryview,
        now: float,
        mtu: int,
        room: int,
    ) -> bytearray | None:
        size = len(packet)
        version = packet[0] >> 4 if size else 0
        if version == _IPV4 and size >= _IPV4_HEADER:
            peer = self._routes.lookup(packet[16:20])
        elif version == _IPV6 and size >= _IPV6_HEADER:
            peer = self._routes.lookup(packet[24:40])
        else:
            return None
        endpoint, local = self._peers.get(peer, (None, None)) if peer is not None else (None, None)
        session = None if local is None else self._sessions.get(local)
        if endpoint is None or local is None or session is None:
            return None
        if (
            now - session.created >= REJECT_AFTER_TIME
            or session.send_counter >= REJECT_AFTER_MESSAGES
            or session.send_counter >= session.send_limit  # the Device persists the next block
        ):
            return None
        padded = padded_size(size, mtu)
        total = HEADER_SIZE + TRANSPORT_OVERHEAD + padded
        if total > room:
            return None
        out = bytearray(total)
        out[:HEADER_SIZE] = endpoint
        plain = bytes(packet) + bytes(padded - size) if padded != size else packet
        if not self._seal(session, plain, memoryview(out)[HEADER_SIZE:]):
            return None  # not reached: the checks above are _seal's
        session.tx_packets += 1
        session.tx_bytes += total - HEADER_SIZE
        self._touched.setdefault(local, session)
        return out

    def outbound(
        self, source: Ring, dest: Ring, limit: int, now: float, mtu: int
    ) -> tuple[int, int]:
        """Up to `limit` packets of a worker ring sealed into the UDP ring; returns (packets
        taken, DONE, PUNT: the next is Python's, or FULL: no room in `dest`)."""
        if source.spanning_pending():
            return 0, _punt_if_any(source)
        batch = source.recv_many(limit)
        stride = source.stride
        sealed: list[bytes | bytearray] = []
        taken, stop = self._seal_many(batch, dest, now=now, mtu=mtu, sealed=sealed, stride=stride)
        del batch
        source.release(taken)
        if sealed:
            dest.send_many(sealed)
        return taken, stop

    def outbound_packets(
        self, packets: Sequence[bytes | bytearray | memoryview], dest: Ring, now: float, mtu: int
    ) -> tuple[int, int]:
        """Packets (the firewall's) sealed into the UDP ring until one is Python's or the
        ring is full; returns (packets taken, stop code as `outbound`)."""
        sealed: list[bytes | bytearray] = []
        taken, stop = self._seal_many(packets, dest, now=now, mtu=mtu, sealed=sealed, stride=None)
        if sealed:
            dest.send_many(sealed)
        return taken, stop

    def _seal_many(  # noqa: PLR0913 - one loop for both outbound calls, keyword-only
        self,
        packets: Sequence[bytes | bytearray | memoryview],
        dest: Ring,
        *,
        now: float,
        mtu: int,
        sealed: list[bytes | bytearray],
        stride: int | None,
    ) -> tuple[int, int]:
        room, dest_stride = dest.free_slots(), dest.stride
        for taken, packet in enumerate(packets):
            if stride is not None and not 0 < len(packet) <= stride:
                return taken, PUNT
            if len(sealed) == room:
                return taken, FULL
            out = self._outbound_one(packet, now, mtu, dest_stride)
            if out is None:
                return taken, PUNT
            sealed.append(out)
        return len(packets), DONE

    # ---- what Python reads once per turn ---------------------------------------------------

    def take_activity(self) -> list[tuple[int, int, int, int, int]]:
        out = []
        for local, s in self._touched.items():
            out.append((local, s.rx_packets, s.rx_bytes, s.tx_packets, s.tx_bytes))
            s.rx_packets = s.rx_bytes = s.tx_packets = s.tx_bytes = 0
        self._touched.clear()
        return out

    def take_drops(self) -> list[int]:
        drops, self._drops = self._drops, [0] * 6
        return drops
