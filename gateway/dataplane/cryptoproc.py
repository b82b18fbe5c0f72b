"""The crypto process: runs the sans-I/O WireGuard Device between the rings.

Inbound: datagrams from the UDP process are decrypted and each inner packet goes to the TUN
worker its flow hashes to (order within a flow holds). Outbound: packets from every worker
are encrypted for the peer their destination routes to. Handshakes, cookies and timers run
here too; the loop sleeps exactly until the next timer is due when there is no traffic.

`CryptoLoop.turn` is that work, one pass at a time, on any rings with the `PacketRing`
methods and with the clock passed in (tests drive it with in-memory rings and a fake clock);
`run_crypto` only turns it and sleeps in epoll. Setting the process up after fork (the
Device, `wg`, reloads, saved state) is gateway/dataplane/cryptomain.py. An exception here
ends the process; the supervisor restarts it and clients re-handshake.
"""

from __future__ import annotations

import logging
import select
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from gateway.config import GatewayConfig
from gateway.dataplane.firewall import Firewall, FirewallCounts
from gateway.dataplane.flow import flow_key, flow_worker, key_worker
from gateway.dataplane.framing import HEADER_SIZE, FramingError, decode_endpoint, encode_endpoint
from gateway.dataplane.heartbeat import Heartbeat
from gateway.dataplane.sleeper import Sleeper
from gateway.endpoint import format_endpoint
from gateway.gcpause import gc_paused
from gateway.nat.handler import ProxyHandler
from gateway.telemetry import stats as st
from gateway.wireguard.device import Device
from gateway.wireguard.drops import Drop
from gateway.wireguard.ratelimiter import RateLimiter
from shm_ring.ring import Ring

log = logging.getLogger(__name__)

BATCH = 100
# Handshake messages cost 20-300 us each in Python (transport: a few us). A turn handles
# transport first and then at most HANDSHAKE_BUDGET handshake messages; the others wait,
# copied, in a queue of HANDSHAKE_QUEUE (the slots they came in are released at once), and
# past that they are dropped and counted, so a flood of initiations cannot starve sessions.
HANDSHAKE_BUDGET = 16
HANDSHAKE_QUEUE = 256
# Under load (the queue 1/8 full, the kernel's criterion) each source address gets its
# handshake messages queued at the kernel's rate (20/s, burst 5), so one flooding host
# costs the loop a token-bucket lookup per message and takes few of the queue's places.
UNDER_LOAD_QUEUED = HANDSHAKE_QUEUE // 8
_HANDSHAKE_TYPES = frozenset((1, 2, 3))  # initiation, response, cookie reply
_IPV4 = 4  # the endpoint header's family byte
STATS_INTERVAL = 1.0  # seconds between copies of per-peer figures into shared memory
CONTROL_CHECK_INTERVAL = 0.005  # seconds between looks at the control fds while busy

EVENT_COUNTER_SLOTS: dict[str, int] = {
    "handshakes_initiated": st.HANDSHAKES_INITIATED,
    "handshakes_completed": st.HANDSHAKES_COMPLETED,
    "handshakes_rejected": st.HANDSHAKES_REJECTED,
    "cookie_replies_sent": st.COOKIE_REPLIES_SENT,
}


class PacketRing(Protocol):
    """What the crypto loop uses of a ring: shm_ring.Ring, or an in-memory ring in tests."""

    @property
    def max_message(self) -> int: ...  # the largest message (packet) it carries, in bytes

    def send_ready(self) -> bool: ...

    def free_slots(self) -> int: ...

    def send_many(self, packets: Sequence[bytes | bytearray | memoryview]) -> int: ...

    def recv_many(self, max_packets: int = ...) -> list[memoryview]: ...

    def release(self) -> None: ...


RingT = TypeVar("RingT", bound=PacketRing)


@dataclass
class CryptoRings(Generic[RingT]):
    """The crypto process's rings: a pair with the UDP process, a pair per TUN worker."""

    from_udp: RingT
    to_udp: RingT
    from_workers: Sequence[RingT]
    to_workers: Sequence[RingT]


def build_device(config: GatewayConfig, now: float) -> Device:
    """The crypto process's Device; it lives as long as the process, so it is frozen out of
    the cycle collector's way (gcpause.py)."""
    with gc_paused(freeze=True):
        device = Device(
            config.interface.private_key,
            mtu=config.interface.mtu,
            unix_time_offset=time.time() - time.monotonic(),
        )
        apply_peers(device, config, now)
    return device


def apply_peers(device: Device, config: GatewayConfig, now: float) -> None:
    """Make the device's peers match the config; unchanged peers keep their sessions."""
    with gc_paused():
        _apply_peers(device, config, now)


def _apply_peers(device: Device, config: GatewayConfig, now: float) -> None:
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
        self._drops: Counter[Drop] = Counter()
        self._events: Counter[str] = Counter()

    def sync(self, device: Device) -> None:
        block = self.block
        for reason, count in device.drops.items():
            delta = count - self._drops[reason]
            if delta:
                block[st.CORE_DROP_SLOTS[reason]] += delta
                self._drops[reason] = count
        for name, slot in EVENT_COUNTER_SLOTS.items():
            count = device.counters[name]
            delta = count - self._events[name]
            if delta:
                block[slot] += delta
                self._events[name] = count


class NatCounterSync:
    """Copies the proxy handler's summary into this process's block (deltas; the gauge as
    it is)."""

    def __init__(self, block: memoryview) -> None:
        self.block = block
        self._last: dict[str, int] = {}

    def sync(self, summary: Mapping[str, int]) -> None:
        for index, name in enumerate(st.NAT_COUNTER_NAMES):
            value = summary.get(name, 0)
            if name in st.NAT_GAUGES:
                self.block[st.NAT_BASE + index] = value
                continue
            delta = value - self._last.get(name, 0)
            if delta > 0:
                self.block[st.NAT_BASE + index] += delta
            self._last[name] = value


class PeerStatsSync:
    """Keeps the shared per-peer table (for /metrics and `show`) up to date.

    Copies only the peers the device reports changed, so idle peers cost nothing. Starts
    from the slots a previous crypto process left (after a restart), releasing those of
    peers that are gone at the first sync.
    """

    def __init__(self, table: st.PeerTable, unix_offset: float) -> None:
        self.table = table
        self.unix_offset = unix_offset
        self._slots: dict[bytes, int] = table.adopt()
        self._adopted: list[bytes] | None = list(self._slots)
        self._endpoints: dict[bytes, str] = {}

    def sync(self, device: Device, block: memoryview) -> None:
        words = self.table.words
        if self._adopted is not None:
            for key in self._adopted:
                if device.peer(key) is None:
                    self.table.release(self._slots.pop(key))
            self._adopted = None
        for peer in device.take_changed_peers():
            key = peer.public_key
            current = device.peer(key)
            if current is not peer:  # removed (perhaps replaced by a new peer with its key)
                if current is None and key in self._slots:
                    self.table.release(self._slots.pop(key))
                    self._endpoints.pop(key, None)
                continue
            slot = self._slots.get(key)
            if slot is None:
                slot = self.table.assign(key)
                if slot is None:
                    block[st.PEER_TABLE_FULL] += 1
                    continue
                self._slots[key] = slot
            endpoint = "" if peer.endpoint is None else format_endpoint(peer.endpoint)
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


class FirewallSync:
    """Copies the firewall's counters into the process block (as deltas) and its
    per-resource counts into the shared resource table."""

    def __init__(self, block: memoryview, table: st.ResourceTable | None) -> None:
        self.block = block
        self.table = table
        self._firewall: Firewall | None = None
        self._last = FirewallCounts()
        self._slots: dict[str, int] = {}
        self._table_full_logged = False

    def sync_counters(self, firewall: Firewall | None) -> None:
        if firewall is None:
            return
        if firewall is not self._firewall:  # a new firewall counts from zero
            self._firewall, self._last = firewall, FirewallCounts()
        counts, last, block = firewall.counts, self._last, self.block
        for name, slot in _FIREWALL_SLOTS:
            delta = getattr(counts, name) - getattr(last, name)
            if delta:
                block[slot] += delta
                setattr(last, name, getattr(counts, name))

    def sync_resources(self, firewall: Firewall | None) -> None:
        table = self.table
        if table is None:
            return
        taken = {} if firewall is None else firewall.take_resource_counts()
        for name, counts in taken.items():
            slot = self._slots.get(name)
            if slot is None:
                slot = table.slot_for(name)
                if slot is None:
                    if not self._table_full_logged:
                        log.warning("resource table full: %s and later have no metrics", name)
                        self._table_full_logged = True
                    continue
                self._slots[name] = slot
            if any(counts):
                table.add(slot, *counts)
        for name in [n for n in self._slots if n not in taken]:
            table.release(self._slots.pop(name))


_FIREWALL_SLOTS = (
    ("policy_drops", st.DROP_POLICY),
    ("malformed", st.DROP_MALFORMED),
    ("icmp_errors_sent", st.ICMP_ERRORS_SENT),
    ("icmp_errors_rate_limited", st.ICMP_ERRORS_RATE_LIMITED),
)


def _source_address(message: memoryview) -> bytes:
    """The raw source address in a ring message's endpoint header (see framing.py)."""
    return bytes(message[4:8] if message[0] == _IPV4 else message[4:20])


class CryptoLoop(Generic[RingT]):
    """The crypto process's work, one turn at a time, with the clock passed in.

    A turn takes what the rings allow, drives the Device, puts the results into the rings and
    runs due timers; it never waits. run_crypto turns it until a turn moves nothing, then
    sleeps for idle_timeout(); tests call both directly with in-memory rings and a fake clock.
    """

    def __init__(  # noqa: PLR0913 - the optional stages are keyword-only
        self,
        device: Device,
        rings: CryptoRings[RingT],
        counters: memoryview,
        peer_table: st.PeerTable,
        *,
        firewall: Firewall | None = None,
        resource_table: st.ResourceTable | None = None,
        keep_timestamps: Callable[[Mapping[bytes, bytes]], None] | None = None,
        proxy: ProxyHandler | None = None,
    ) -> None:
        self.device = device
        self._keep_timestamps = keep_timestamps
        # None when no policy or DNS proxy exists: packets then skip the firewall entirely.
        self.firewall = firewall
        self._firewall_sync = FirewallSync(counters, resource_table)
        self.proxy = proxy  # its NAT entries expire on this loop's timers
        self.rings = rings
        self.counters = counters
        self._drops = CounterSync(counters)
        self._peers = PeerStatsSync(peer_table, device.unix_time_offset)
        self._nat = NatCounterSync(counters)
        self._to_workers = list(rings.to_workers)
        self._from_workers = list(rings.from_workers)
        self._max_inner = min(r.max_message for r in self._to_workers)
        self._max_datagram = rings.to_udp.max_message - HEADER_SIZE
        self._per_worker: list[list[bytes | bytearray]] = [[] for _ in self._to_workers]
        self._next_stats = 0.0
        # Ring messages waiting for a turn's budget, with when they arrived.
        self.handshakes: deque[tuple[bytes, float]] = deque()
        self.handshakes_dropped = 0  # not queued (counted as rate_limited too)
        self._source_limiter = RateLimiter()

    def turn(self, now: float) -> bool:
        """Move and transform what the rings allow; True if any packet was taken or any
        waiting handshake message handled (then more may wait for the next turn)."""
        work = self._decrypt(now)
        if self._handle_handshakes(now):
            work = True
        if self._keep_timestamps is not None:
            accepted = self.device.take_timestamps()
            if accepted:  # before the responses leave: a restart never forgets a sent one
                self._keep_timestamps(accepted)
        outbound: list[bytes] = []
        if self._encrypt(now, outbound):
            work = True
        self._run_timers(now, outbound)
        if self.firewall is not None:
            self._send_replies(self.firewall, now, outbound)
        if outbound:
            taken = self.rings.to_udp.send_many(outbound)
            if taken < len(outbound):
                self.counters[st.DROP_RING_FULL] += len(outbound) - taken
        if now >= self._next_stats:
            self._drops.sync(self.device)
            self._peers.sync(self.device, self.counters)
            self._firewall_sync.sync_counters(self.firewall)
            self._firewall_sync.sync_resources(self.firewall)
            if self.proxy is not None:
                self._nat.sync(self.proxy.summary())
            self._next_stats = now + STATS_INTERVAL
        return work

    def _decrypt(self, now: float) -> bool:  # noqa: PLR0912 - the per-packet path, inline for speed
        """Datagrams from the UDP ring to the workers' rings; True if any was taken."""
        to_workers = self._to_workers
        # Inbound only while every worker ring has room: otherwise wait (backpressure).
        if not all(r.send_ready() for r in to_workers):
            return False
        from_udp = self.rings.from_udp
        # A datagram yields at most one packet: read no more than every worker ring takes.
        batch = from_udp.recv_many(min(BATCH, *(r.free_slots() for r in to_workers)))
        if not batch:
            return False
        c = self.counters
        handle_datagram = self.device.handle_datagram
        firewall = self.firewall
        max_inner = self._max_inner
        per_worker = self._per_worker
        workers = len(to_workers)
        for message in batch:
            if len(message) > HEADER_SIZE and message[HEADER_SIZE] in _HANDSHAKE_TYPES:
                self._queue_handshake(message, now)
                continue
            try:
                src = decode_endpoint(message)
            except FramingError:
                c[st.DROP_MALFORMED] += 1
                continue
            inner = handle_datagram(message[HEADER_SIZE:], src, now)
            if inner is None:
                continue
            if firewall is None:
                worker = flow_worker(inner, workers)
            else:
                # The core checked the source against this peer's allowed IPs. The flow key
                # serves the firewall's cache and picks the worker.
                flow = flow_key(inner)
                passed = firewall.from_peer_keyed(inner, flow, now)
                if passed is None:
                    continue
                if passed is inner and flow is not None:
                    worker = key_worker(flow, workers)
                else:  # no key, or translated (a DNS resource's NAT)
                    inner, worker = passed, flow_worker(passed, workers)
            if len(inner) > max_inner:
                c[st.DROP_TOO_BIG] += 1
            else:
                per_worker[worker].append(inner)
        from_udp.release()
        for ring, packets in zip(to_workers, per_worker, strict=True):
            if packets:
                taken = ring.send_many(packets)
                if taken < len(packets):
                    c[st.DROP_RING_FULL] += len(packets) - taken
                packets.clear()
        return True

    def _queue_handshake(self, message: memoryview, now: float) -> None:
        """A handshake message waits (copied: its slot is released) for a turn's budget."""
        queued = len(self.handshakes)
        if queued < HANDSHAKE_QUEUE and (
            queued < UNDER_LOAD_QUEUED or self._source_limiter.allow(_source_address(message), now)
        ):
            self.handshakes.append((bytes(message), now))
        else:
            self.handshakes_dropped += 1
            self.counters[st.DROP_RATE_LIMITED] += 1

    def _handle_handshakes(self, now: float) -> bool:
        """At most HANDSHAKE_BUDGET waiting handshake messages; True if any was handled."""
        handshakes = self.handshakes
        if not handshakes:
            return False
        handle_datagram = self.device.handle_datagram
        for _ in range(min(HANDSHAKE_BUDGET, len(handshakes))):
            message, arrived = handshakes.popleft()
            try:
                src = decode_endpoint(message)
            except FramingError:
                self.counters[st.DROP_MALFORMED] += 1
                continue
            # Answers go to the outbox, never to a worker. The arrival time keeps roaming
            # in arrival order: transport from the same batch was handled first.
            handle_datagram(memoryview(message)[HEADER_SIZE:], src, now, arrived=arrived)
        return True

    def _encrypt(self, now: float, outbound: list[bytes]) -> bool:
        """Packets from the workers' rings, encrypted into `outbound`; True if any was taken."""
        # Outbound only while the UDP ring has room.
        room = self.rings.to_udp.free_slots()
        if not room:
            return False
        handle_packet = self.device.handle_packet
        firewall = self.firewall
        work = False
        for ring in self._from_workers:
            # A packet yields at most one datagram: read no more than the UDP ring takes.
            batch = ring.recv_many(min(BATCH, room)) if room else []
            if not batch:
                continue
            room -= len(batch)
            work = True
            for packet in batch if firewall is None else firewall.to_peer_many(batch, now):
                sent = handle_packet(packet, now)
                if sent is not None:
                    endpoint, datagram = sent
                    outbound.append(encode_endpoint(endpoint) + datagram)
            ring.release()
        return work

    def _send_replies(self, firewall: Firewall, now: float, outbound: list[bytes]) -> None:
        """The ICMP errors the firewall generated, encrypted to the peers they address."""
        handle_packet = self.device.handle_packet
        for reply in firewall.take_replies():
            sent = handle_packet(reply, now)
            if sent is not None:
                endpoint, datagram = sent
                outbound.append(encode_endpoint(endpoint) + datagram)

    def _run_timers(self, now: float, outbound: list[bytes]) -> None:
        """Due timers; whatever the Device wants to send (handshakes too) into `outbound`."""
        device = self.device
        device.tick(now)  # O(1) when nothing is due (a heap), so every turn
        proxy = self.proxy
        if proxy is not None and (due := proxy.next_deadline()) is not None and due <= now:
            proxy.expire(now)
        max_datagram = self._max_datagram
        for endpoint, datagram in device.take_transmits():
            if len(datagram) <= max_datagram:
                outbound.append(encode_endpoint(endpoint) + datagram)
            else:
                self.counters[st.DROP_TOO_BIG] += 1

    def idle_timeout(self, now: float) -> float | None:
        """Before sleeping: copy the drop counters out and say how long the loop may sleep
        (None: until a ring or fd wakes it)."""
        device = self.device
        self._drops.sync(device)
        self._firewall_sync.sync_counters(self.firewall)
        deadline = device.next_deadline()
        if self.proxy is not None and (nat := self.proxy.next_deadline()) is not None:
            deadline = nat if deadline is None else min(deadline, nat)
        timeout = None if deadline is None else deadline - now
        if device.has_changed_peers:  # wake to copy them when the stats interval is up
            stats_due = max(0.0, self._next_stats - now)
            timeout = stats_due if timeout is None else min(timeout, stats_due)
        return timeout


def run_crypto(  # noqa: PLR0913 - the loop's inputs, keyword-only after the rings
    device: Device,
    rings: CryptoRings[Ring],
    counters: memoryview,
    peer_table: st.PeerTable,
    *,
    handlers: Mapping[int, Callable[[float], None]] | None = None,
    heartbeat: Heartbeat | None = None,
    resource_table: st.ResourceTable | None = None,
    on_loop: Callable[[CryptoLoop[Ring]], None] | None = None,
    keep_timestamps: Callable[[Mapping[bytes, bytes]], None] | None = None,
    proxy: ProxyHandler | None = None,
) -> None:
    """Forever: turn the loop while it finds work, else sleep in one epoll on the rings, the
    handlers' fds and the next timer; a handler gets the time it was woken.

    The handlers' fds are also in an epoll of their own, looked at every
    CONTROL_CHECK_INTERVAL while busy: the DNS process waits for its proxy mapping to be
    applied before it answers, and traffic must not starve that."""
    loop = CryptoLoop(
        device,
        rings,
        counters,
        peer_table,
        resource_table=resource_table,
        keep_timestamps=keep_timestamps,
        proxy=proxy,
    )
    if on_loop is not None:
        on_loop(loop)  # e.g. the firewall, which reloads may switch on and off
    from_udp, to_udp = rings.from_udp, rings.to_udp
    to_workers = list(rings.to_workers)
    consumers = [from_udp, *rings.from_workers]
    sleeper = Sleeper(consumers=consumers, producers=[to_udp, *to_workers], heartbeat=heartbeat)
    beat = sleeper.heartbeat.beat
    handlers = dict(handlers or {})
    control = select.epoll()  # the same fds again, for a zero-timeout look while busy
    for fd in handlers:
        control.register(fd, select.EPOLLIN)
        # In the sleeper too (not the nested epoll): the heartbeat publishes these fds, so
        # the supervisor sees a sleeping crypto process with a message waiting as hung.
        sleeper.watch(fd, select.EPOLLIN)
    turn = loop.turn
    monotonic = time.monotonic
    busy_since = monotonic()
    next_control = 0.0
    while True:
        beat()
        now = monotonic()
        if now >= next_control:
            next_control = now + CONTROL_CHECK_INTERVAL
            for fd, _ in control.poll(0):
                handlers[fd](now)
        if turn(now):
            continue
        timeout = loop.idle_timeout(monotonic())
        # Wait for room in the rings that are full, not for input they could not take.
        inbound_blocked = [r for r in to_workers if not r.send_ready()]
        outbound_blocked = [] if to_udp.send_ready() else [to_udp]
        counters[st.BUSY_NS] += int((monotonic() - busy_since) * 1e9)
        sleeper.sleep(
            [r for r in consumers if r is not from_udp or not inbound_blocked]
            if not outbound_blocked
            else ([] if inbound_blocked else [from_udp]),
            inbound_blocked + outbound_blocked,
            timeout,
        )
        busy_since = monotonic()
        next_control = 0.0  # whatever woke us, look at the handlers' fds first
