"""The crypto process: runs the sans-I/O WireGuard Device between the rings.

Inbound: datagrams from the UDP process are decrypted and each inner packet goes to the TUN
worker its flow hashes to (order within a flow holds). Outbound: packets from every worker
are encrypted for the peer their destination routes to. Handshakes, cookies and timers run
here too; the loop sleeps exactly until the next timer is due when there is no traffic.
"""

from __future__ import annotations

import logging
import select
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from gateway import stats as st
from gateway.config import GatewayConfig
from gateway.dataplane.flow import flow_worker
from gateway.dataplane.framing import HEADER_SIZE, FramingError, decode_endpoint, encode_endpoint
from gateway.dataplane.sleeper import Sleeper
from gateway.wireguard.device import Device
from shm_ring.ring import Ring

log = logging.getLogger(__name__)

BATCH = 100
STATS_INTERVAL = 1.0  # seconds between copies of per-peer figures into shared memory
TIMER_CHECK_INTERVAL = 0.005  # seconds between looks for due timers while busy

# The core's drop reasons, folded into the reasons the metrics export.
DROP_REASON_SLOTS: dict[str, int] = {
    "malformed": st.DROP_MALFORMED,
    "malformed_inner": st.DROP_MALFORMED,
    "malformed_packet": st.DROP_MALFORMED,
    "bad_cookie_reply": st.DROP_MALFORMED,
    "handshake_failed": st.DROP_MALFORMED,
    "bad_mac1": st.DROP_MAC1_INVALID,
    "under_load_cookie": st.DROP_COOKIE_REQUIRED,
    "rate_limited": st.DROP_RATE_LIMITED,
    "unknown_index": st.DROP_UNKNOWN_RECEIVER,
    "unknown_peer": st.DROP_UNKNOWN_RECEIVER,
    "decrypt_failed": st.DROP_DECRYPT_FAILED,
    "expired_keypair": st.DROP_NO_SESSION,
    "replay": st.DROP_REPLAY,
    "replayed_timestamp": st.DROP_REPLAY,  # an initiation no newer than the last one
    "handshake_flood": st.DROP_RATE_LIMITED,  # a second initiation within 20 ms
    "spoofed_source": st.DROP_ALLOWED_IPS,
    "no_peer_for_destination": st.DROP_NO_ROUTE,
    "no_endpoint": st.DROP_NO_SESSION,
    "staged_overflow": st.DROP_NO_SESSION,
    "handshake_gave_up": st.DROP_NO_SESSION,
    "no_private_key": st.DROP_NO_SESSION,
    "outbox_overflow": st.DROP_RING_FULL,
}
EVENT_COUNTER_SLOTS: dict[str, int] = {
    "handshakes_initiated": st.HANDSHAKES_INITIATED,
    "handshakes_completed": st.HANDSHAKES_COMPLETED,
    "handshakes_rejected": st.HANDSHAKES_REJECTED,
    "cookie_replies_sent": st.COOKIE_REPLIES_SENT,
}


@dataclass
class CryptoRings:
    from_udp: Ring
    to_udp: Ring
    from_workers: Sequence[Ring]
    to_workers: Sequence[Ring]


def build_device(config: GatewayConfig, now: float) -> Device:
    device = Device(
        config.interface.private_key,
        mtu=config.interface.mtu,
        unix_time_offset=time.time() - time.monotonic(),
    )
    apply_peers(device, config, now)
    return device


def apply_peers(device: Device, config: GatewayConfig, now: float) -> None:
    """Make the device's peers match the config; unchanged peers keep their sessions."""
    device.set_private_key(config.interface.private_key)
    wanted = {peer.public_key: peer for peer in config.peers}
    for running in list(device.peers()):
        if running.public_key not in wanted:
            device.remove_peer(running.public_key)
    for key, conf in wanted.items():
        existing = device.peer(key)
        device.upsert_peer(
            key,
            preshared_key=conf.preshared_key,
            # Keep a roamed endpoint unless the config names a different one.
            endpoint=conf.endpoint if existing is None or conf.endpoint else existing.endpoint,
            persistent_keepalive=conf.persistent_keepalive or 0,
            allowed_ips=conf.allowed_ips,
            replace_allowed_ips=True,
            now=now,
        )


class CounterSync:
    """Copies the core's counters into this process's shared block as deltas.

    The block outlives a restarted crypto process, so counters there only ever grow.
    """

    def __init__(self, block: memoryview) -> None:
        self.block = block
        self._drops: Counter[str] = Counter()
        self._events: Counter[str] = Counter()

    def sync(self, device: Device) -> None:
        block = self.block
        for reason, count in device.drops.items():
            delta = count - self._drops[reason]
            if delta:
                block[DROP_REASON_SLOTS.get(reason, st.DROP_MALFORMED)] += delta
                self._drops[reason] = count
        for name, slot in EVENT_COUNTER_SLOTS.items():
            count = device.counters[name]
            delta = count - self._events[name]
            if delta:
                block[slot] += delta
                self._events[name] = count


class PeerStatsSync:
    """Keeps the shared per-peer table (for /metrics and `show`) up to date."""

    def __init__(self, table: st.PeerTable, unix_offset: float) -> None:
        self.table = table
        self.unix_offset = unix_offset
        self._slots: dict[bytes, int] = {}
        self._endpoints: dict[bytes, str] = {}

    def sync(self, device: Device, block: memoryview) -> None:
        words = self.table.words
        live = set()
        for peer in device.peers():
            key = peer.public_key
            live.add(key)
            slot = self._slots.get(key)
            if slot is None:
                slot = self.table.assign(key)
                if slot is None:
                    block[st.PEER_TABLE_FULL] += 1
                    continue
                self._slots[key] = slot
            endpoint = "" if peer.endpoint is None else _endpoint_text(peer.endpoint)
            if self._endpoints.get(key) != endpoint:
                self.table.set_endpoint(slot, endpoint)
                self._endpoints[key] = endpoint
            base = self.table.base(slot)
            words[base + st.PEER_RX_BYTES] = peer.rx_bytes
            words[base + st.PEER_RX_PACKETS] = peer.rx_packets
            words[base + st.PEER_TX_BYTES] = peer.tx_bytes
            words[base + st.PEER_TX_PACKETS] = peer.tx_packets
            if peer.last_handshake is not None:
                wall_ns = int((peer.last_handshake + self.unix_offset) * 1e9)
                self.table.set_last_handshake(slot, wall_ns)
        for key in [k for k in self._slots if k not in live]:
            self.table.release(self._slots.pop(key))
            self._endpoints.pop(key, None)


def _endpoint_text(endpoint: tuple[str, int]) -> str:
    host, port = endpoint
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def run_crypto(  # noqa: PLR0912, PLR0915 - the one hot loop, kept in one place on purpose
    device: Device,
    rings: CryptoRings,
    counters: memoryview,
    peer_table: st.PeerTable,
    *,
    handlers: Mapping[int, Callable[[float], None]] | None = None,
) -> None:
    """Forever: move and transform packets between the rings; run timers."""
    from_udp, to_udp = rings.from_udp, rings.to_udp
    from_workers, to_workers = list(rings.from_workers), list(rings.to_workers)
    workers = len(to_workers)
    consumers = [from_udp, *from_workers]
    sleeper = Sleeper(consumers=consumers, producers=[to_udp, *to_workers])
    handlers = dict(handlers or {})
    for fd in handlers:
        sleeper.watch(fd, select.EPOLLIN)
    c = counters
    drops = CounterSync(c)
    peers = PeerStatsSync(peer_table, device.unix_time_offset)
    max_inner = min(r.max_message for r in to_workers)
    max_datagram = to_udp.max_message - HEADER_SIZE
    next_stats = 0.0
    timers_at = 0.0
    handle_datagram, handle_packet = device.handle_datagram, device.handle_packet
    per_worker: list[list[bytes | bytearray]] = [[] for _ in range(workers)]
    monotonic = time.monotonic
    busy_since = monotonic()
    while True:
        now = monotonic()
        work = False
        # Inbound only while every worker ring has room: otherwise wait (backpressure).
        inbound_blocked = [r for r in to_workers if not r.send_ready()]
        if not inbound_blocked:
            # A datagram yields at most one packet: read no more than every worker ring takes.
            batch = from_udp.recv_many(min(BATCH, *(r.free_slots() for r in to_workers)))
            if batch:
                work = True
                for message in batch:
                    try:
                        src = decode_endpoint(message)
                    except FramingError:
                        c[st.DROP_MALFORMED] += 1
                        continue
                    inner = handle_datagram(message[HEADER_SIZE:], src, now)
                    if inner is not None:
                        if len(inner) > max_inner:
                            c[st.DROP_TOO_BIG] += 1
                        else:
                            per_worker[flow_worker(inner, workers)].append(inner)
                from_udp.release()
                for ring, packets in zip(to_workers, per_worker, strict=True):
                    if packets:
                        taken = ring.send_many(packets)
                        if taken < len(packets):
                            c[st.DROP_RING_FULL] += len(packets) - taken
                        packets.clear()
        # Outbound only while the UDP ring has room.
        outbound: list[bytes] = []
        room = to_udp.free_slots()
        if room:
            for ring in from_workers:
                # A packet yields at most one datagram: read no more than the UDP ring takes.
                batch = ring.recv_many(min(BATCH, room)) if room else []
                if not batch:
                    continue
                room -= len(batch)
                work = True
                for packet in batch:
                    sent = handle_packet(packet, now)
                    if sent is not None:
                        endpoint, datagram = sent
                        outbound.append(encode_endpoint(endpoint) + datagram)
                ring.release()
        # Finding the next timer scans every peer: while busy, look only every few ms
        # (WireGuard's timers are seconds apart); before sleeping, look exactly (below).
        if now >= timers_at:
            timers_at = now + TIMER_CHECK_INTERVAL
            deadline = device.next_deadline()
            if deadline is not None and deadline <= now:
                device.tick(now)
        for endpoint, datagram in device.take_transmits():
            if len(datagram) <= max_datagram:
                outbound.append(encode_endpoint(endpoint) + datagram)
            else:
                c[st.DROP_TOO_BIG] += 1
        if outbound:
            taken = to_udp.send_many(outbound)
            if taken < len(outbound):
                c[st.DROP_RING_FULL] += len(outbound) - taken
        if now >= next_stats:
            drops.sync(device)
            peers.sync(device, c)
            next_stats = now + STATS_INTERVAL
        if work:
            continue
        drops.sync(device)
        deadline = device.next_deadline()
        timeout = None if deadline is None else deadline - monotonic()
        # After waking: look again when this deadline is due, or within the busy interval
        # (packets handled meanwhile may arm earlier timers).
        timers_at = monotonic() + TIMER_CHECK_INTERVAL
        if deadline is not None:
            timers_at = min(timers_at, deadline)
        if next_stats and (timeout is None or timeout > STATS_INTERVAL):
            timeout = STATS_INTERVAL  # keep the shared figures fresh while sessions live
        outbound_blocked = [] if to_udp.send_ready() else [to_udp]
        c[st.BUSY_NS] += int((monotonic() - busy_since) * 1e9)
        events = sleeper.sleep(
            [r for r in consumers if r is not from_udp or not inbound_blocked]
            if not outbound_blocked
            else ([] if inbound_blocked else [from_udp]),
            inbound_blocked + outbound_blocked,
            timeout,
        )
        busy_since = monotonic()
        for fd, _ in events:
            handler = handlers.get(fd)
            if handler is not None:
                handler(monotonic())
