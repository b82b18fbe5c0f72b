"""The crypto process: runs the sans-I/O WireGuard Device between the rings.

Inbound: datagrams from the UDP process are decrypted and each inner packet goes to the TUN
worker its flow hashes to (order within a flow holds). Outbound: packets from every worker
are encrypted for the peer their destination routes to. Handshakes, cookies and timers run
here too; the loop sleeps exactly until the next timer is due when there is no traffic.

`CryptoLoop.turn` is that work, one pass at a time, on any rings with the `PacketRing`
methods and with the clock passed in (tests drive it with in-memory rings and a fake clock);
`run_crypto` only turns it and sleeps in epoll. Setting the process up after fork (the
Device, `wg`, reloads, saved state) is gateway/dataplane/cryptomain.py; building the Device
from the config is device_config.py, copying its figures into shared memory
crypto_telemetry.py. An exception here
ends the process; the supervisor restarts it and clients re-handshake.
"""

from __future__ import annotations

import logging
import select
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Generic

from gateway.dataplane.crypto_telemetry import (
    CounterSync,
    FirewallSync,
    NatCounterSync,
    PeerStatsSync,
)
from gateway.dataplane.firewall import Firewall
from gateway.dataplane.flow import flow_key, flow_worker, key_worker
from gateway.dataplane.framing import HEADER_SIZE, FramingError, decode_endpoint, encode_endpoint
from gateway.dataplane.heartbeat import Heartbeat
from gateway.dataplane.rings import CryptoRings, RingT
from gateway.dataplane.sleeper import Sleeper
from gateway.nat.handler import ProxyHandler
from gateway.telemetry import stats as st
from gateway.wireguard.device import Device
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
        self.handshakes: deque[bytes] = deque()  # ring messages waiting for a turn's budget
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
            self.handshakes.append(bytes(message))
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
            message = handshakes.popleft()
            try:
                src = decode_endpoint(message)
            except FramingError:
                self.counters[st.DROP_MALFORMED] += 1
                continue
            # Answers go to the outbox, never to a worker.
            handle_datagram(memoryview(message)[HEADER_SIZE:], src, now)
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
