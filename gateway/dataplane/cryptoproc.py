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
from gateway.dataplane.framing import (
    HEADER_SIZE,
    FramingError,
    carries_handshake,
    decode_message,
    encode_message,
    remote_address,
)
from gateway.dataplane.heartbeat import Heartbeat
from gateway.dataplane.rings import CryptoRings, RingT
from gateway.dataplane.sleeper import Sleeper
from gateway.dataplane.transport import batches_for
from gateway.dataplane.transport_py import PUNT
from gateway.dataplane.transport_sync import TransportSync
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
STATS_INTERVAL = 1.0  # seconds between copies of per-peer figures into shared memory
CONTROL_CHECK_INTERVAL = 0.005  # seconds between looks at the control fds while busy


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
        # The transport's batches (native or Python) run the per-packet path when the
        # Device's sessions are a Transport and every ring is an shm ring; otherwise (unit
        # tests' in-memory rings) every packet goes through the Device as below.
        transport = batches_for(device.transport)
        shm = all(isinstance(r, Ring) for r in (rings.from_udp, rings.to_udp, *self._to_workers))
        shm = shm and all(isinstance(r, Ring) for r in self._from_workers)
        self._sync = None if transport is None or not shm else TransportSync(device, transport)

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

    def sync_peer_stats(self) -> None:
        """Copy the changed peers' figures now (after a reload), not at the next interval."""
        self._peers.sync(self.device, self.counters)

    def _decrypt(self, now: float) -> bool:
        """Datagrams from the UDP ring to the workers' rings; True if any was taken."""
        if self._sync is not None:
            return self._decrypt_batches(self._sync, now)
        batch = self._take_datagrams()
        if not batch:
            return False
        self._open_datagrams(batch, now)
        self.rings.from_udp.release()
        self._send_to_workers()
        return True

    def _decrypt_batches(self, sync: TransportSync, now: float) -> bool:
        """_decrypt through the transport's batches: they stop before any message they leave
        to the Device, which takes that one as _decrypt would, and go on after it."""
        to_workers = self._to_workers
        if not all(r.send_ready() for r in to_workers):
            return False
        budget = min(BATCH, *(r.free_slots() for r in to_workers))
        from_udp = self.rings.from_udp
        assert isinstance(from_udp, Ring)  # noqa: S101 - _sync exists only for shm rings
        shm_workers = [r for r in to_workers if isinstance(r, Ring)]
        transport, firewall = sync.transport, self.firewall
        work = False
        sync.push()
        while budget > 0:
            if firewall is None:
                taken, stop = transport.inbound(from_udp, shm_workers, budget, now)
            else:
                taken, stop, packets = transport.inbound_packets(
                    from_udp, budget, now, self._max_inner
                )
                self._route_inbound(firewall, packets, now)
            budget -= taken
            work = work or taken > 0
            if stop != PUNT:
                break
            self._open_datagrams(from_udp.recv_many(1), now)  # the Device's message
            from_udp.release()
            self._send_to_workers()
            budget -= 1
            work = True
            sync.push()
        sync.pull(now, self.counters)
        return work

    def _route_inbound(self, firewall: Firewall, packets: list[bytes], now: float) -> None:
        """Decrypted packets through the firewall into their workers' rings."""
        per_worker, max_inner = self._per_worker, self._max_inner
        for inner in packets:
            passed = self._filter_inbound(firewall, bytearray(inner), now)
            if passed is None:
                continue
            packet, worker = passed
            if len(packet) > max_inner:
                self.counters[st.DROP_TOO_BIG] += 1
            else:
                per_worker[worker].append(packet)
        self._send_to_workers()

    def _take_datagrams(self) -> list[memoryview]:
        """As many datagrams from the UDP ring as every worker ring has room for (a datagram
        yields at most one packet); none while any worker ring is full (backpressure)."""
        to_workers = self._to_workers
        if not all(r.send_ready() for r in to_workers):
            return []
        return self.rings.from_udp.recv_many(min(BATCH, *(r.free_slots() for r in to_workers)))

    def _open_datagrams(self, batch: list[memoryview], now: float) -> None:  # the hot path
        """Queue handshake messages; decrypt the others and put each inner packet the
        firewall passes into the batch of the worker its flow hashes to."""
        c = self.counters
        handle_datagram = self.device.handle_datagram
        firewall = self.firewall
        max_inner = self._max_inner
        per_worker = self._per_worker
        workers = len(per_worker)
        for message in batch:
            if carries_handshake(message):
                self._queue_handshake(message, now)
                continue
            try:
                src, datagram = decode_message(message)
            except FramingError:
                c[st.DROP_MALFORMED] += 1
                continue
            inner = handle_datagram(datagram, src, now)
            if inner is None:
                continue
            if firewall is None:
                worker = flow_worker(inner, workers)
            else:
                passed = self._filter_inbound(firewall, inner, now)
                if passed is None:
                    continue
                inner, worker = passed
            if len(inner) > max_inner:
                c[st.DROP_TOO_BIG] += 1
            else:
                per_worker[worker].append(inner)

    def _filter_inbound(
        self, firewall: Firewall, inner: bytearray, now: float
    ) -> tuple[bytearray, int] | None:
        """The firewall's verdict on a decrypted packet (the core already checked its source
        against the peer's allowed IPs): the packet to forward (maybe translated) and its
        worker, or None. The flow key serves the firewall's cache and picks the worker."""
        flow = flow_key(inner)
        passed = firewall.from_peer_keyed(inner, flow, now)
        if passed is None:
            return None
        workers = len(self._per_worker)
        if passed is inner and flow is not None:
            return inner, key_worker(flow, workers)
        return passed, flow_worker(passed, workers)  # no key, or translated (DNS resource NAT)

    def _send_to_workers(self) -> None:
        """Each worker's batch into its ring; what a ring does not take is counted."""
        for ring, packets in zip(self._to_workers, self._per_worker, strict=True):
            if packets:
                taken = ring.send_many(packets)
                if taken < len(packets):
                    self.counters[st.DROP_RING_FULL] += len(packets) - taken
                packets.clear()

    def _queue_handshake(self, message: memoryview, now: float) -> None:
        """A handshake message waits (copied: its slot is released) for a turn's budget."""
        queued = len(self.handshakes)
        if queued < HANDSHAKE_QUEUE and (
            queued < UNDER_LOAD_QUEUED or self._source_limiter.allow(remote_address(message), now)
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
                src, datagram = decode_message(memoryview(message))
            except FramingError:
                self.counters[st.DROP_MALFORMED] += 1
                continue
            # Answers go to the outbox, never to a worker. The arrival time keeps roaming
            # in arrival order: transport from the same batch was handled first.
            handle_datagram(datagram, src, now, arrived=arrived)
        return True

    def _encrypt(self, now: float, outbound: list[bytes]) -> bool:
        """Packets from the workers' rings, encrypted into `outbound`; True if any was taken."""
        # Outbound only while the UDP ring has room.
        room = self.rings.to_udp.free_slots()
        if not room:
            return False
        if self._sync is not None:
            return self._encrypt_batches(self._sync, room, now)
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
                    outbound.append(encode_message(*sent))
            ring.release()
        return work

    def _encrypt_batches(self, sync: TransportSync, room: int, now: float) -> bool:
        """_encrypt through the transport's batches, straight into the UDP ring; a packet
        they leave to the Device is encrypted by it and sent at once (order holds)."""
        to_udp = self.rings.to_udp
        assert isinstance(to_udp, Ring)  # noqa: S101 - _sync exists only for shm rings
        transport, firewall, mtu = sync.transport, self.firewall, self.device.mtu
        work = False
        sync.push()
        for ring in self._from_workers:
            assert isinstance(ring, Ring)  # noqa: S101 - as above
            budget = min(BATCH, room)
            if firewall is not None:
                batch = ring.recv_many(budget)
                packets = firewall.to_peer_many(batch, now) if batch else []
                done = 0
                while done < len(packets):
                    taken, stop = transport.outbound_packets(packets[done:], to_udp, now, mtu)
                    done += taken
                    if stop != PUNT:
                        break
                    self._encrypt_one(packets[done], now)
                    done += 1
                    sync.push()
                if done < len(packets):  # the UDP ring filled up
                    self.counters[st.DROP_RING_FULL] += len(packets) - done
                work = work or bool(batch)
                del batch, packets
                ring.release()
                room -= done
                if room <= 0:
                    break
                continue
            while budget > 0:
                taken, stop = transport.outbound(ring, to_udp, budget, now, mtu)
                budget -= taken
                room -= taken
                work = work or taken > 0
                if stop != PUNT:
                    break
                batch = ring.recv_many(1)
                self._encrypt_one(batch[0], now)
                del batch
                ring.release()
                budget -= 1
                room -= 1
                work = True
                sync.push()
            if room <= 0:
                break
        sync.pull(now, self.counters)
        return work

    def _encrypt_one(self, packet: bytes | bytearray | memoryview, now: float) -> None:
        """One packet by the Device; its datagram (if any) into the UDP ring now."""
        sent = self.device.handle_packet(packet, now)
        if sent is not None and not self.rings.to_udp.send_many([encode_message(*sent)]):
            self.counters[st.DROP_RING_FULL] += 1

    def _send_replies(self, firewall: Firewall, now: float, outbound: list[bytes]) -> None:
        """The ICMP errors the firewall generated, encrypted to the peers they address."""
        handle_packet = self.device.handle_packet
        for reply in firewall.take_replies():
            sent = handle_packet(reply, now)
            if sent is not None:
                outbound.append(encode_message(*sent))

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
                outbound.append(encode_message(endpoint, datagram))
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
