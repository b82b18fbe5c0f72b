"""The device's timer heap: same behaviour as scanning every peer, and no work per idle peer.

The reference is the scan the device used before the heap (every peer's timers looked at on
every `next_deadline` and `tick`). Two worlds, one gateway Device each (heap vs scan) and the
same clients, run the same random schedule with the same seeded randomness: every datagram
the gateway sends, its deadline, counters and drops must be identical.
"""

from __future__ import annotations

import gc
import random
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import ip_network

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.endpoint import Endpoint
from gateway.wireguard.crypto import public_key
from gateway.wireguard.device import Device
from gateway.wireguard.timers import TIMER_NAMES, PeerTimers, TimerQueue, expired, next_deadline
from testbed.wire import ipv4_packet, make_wire

CLIENTS = 4
GATEWAY_ENDPOINT: Endpoint = ("192.0.2.254", 51820)
GATEWAY_INNER = "10.9.0.254"


class ScanDevice(Device):
    """The reference: the device's timers as they were run before the heap."""

    def next_deadline(self) -> float | None:
        best: float | None = None
        for peer in self._peers.values():
            deadline = next_deadline(peer.timers)
            if deadline is not None and (best is None or deadline < best):
                best = deadline
        return best

    def tick(self, now: float) -> None:
        for peer in list(self._peers.values()):
            deadline = next_deadline(peer.timers)
            if deadline is None or deadline > now:
                continue
            for name in expired(peer.timers, now):
                getattr(self, f"_on_{name}")(peer, now)


def _rng(seed: int) -> Callable[[int], bytes]:
    return random.Random(seed).randbytes


def _key(seed: int) -> bytes:
    return random.Random(seed).randbytes(32)


def _client_endpoint(i: int) -> Endpoint:
    return (f"192.0.2.{i + 1}", 51820)


def _client_inner(i: int) -> str:
    return f"10.9.0.{i + 1}"


@dataclass
class World:
    gateway: Device
    clients: list[Device]
    now: float = 1000.0
    lost: bool = False
    trace: list[object] = field(default_factory=list)

    @classmethod
    def build(cls, device_type: type[Device]) -> World:
        gateway = device_type(_key(1), rng=_rng(2))
        clients = []
        for i in range(CLIENTS):
            client = Device(_key(100 + i), rng=_rng(200 + i))
            client.upsert_peer(
                public_key(_key(1)),
                endpoint=GATEWAY_ENDPOINT,
                allowed_ips=[ip_network("10.9.0.0/24")],
                persistent_keepalive=25 if i == 0 else 0,
                now=1000.0,
            )
            clients.append(client)
        world = cls(gateway, clients)
        for i in range(CLIENTS):
            world.add(i, keepalive=0)
        return world

    def add(self, i: int, keepalive: int) -> None:
        self.gateway.upsert_peer(
            public_key(_key(100 + i)),
            endpoint=_client_endpoint(i),
            allowed_ips=[ip_network(f"{_client_inner(i)}/32")],
            persistent_keepalive=keepalive,
            now=self.now,
        )

    def apply(self, op: tuple[str, int, float]) -> None:
        name, i, value = op
        if name == "advance":
            self.now += value
            self.gateway.tick(self.now)
            for client in self.clients:
                client.tick(self.now)
        elif name == "client_send":
            self.clients[i].handle_packet(
                ipv4_packet(_client_inner(i), GATEWAY_INNER), self.now
            )  # staged or sent: transmits are collected by deliver()
            self._deliver_client(i, self.clients[i].take_transmits())
        elif name == "gateway_send":
            sent = self.gateway.handle_packet(
                ipv4_packet(GATEWAY_INNER, _client_inner(i)), self.now
            )
            self.trace.append(("sent", sent))
            if sent is not None:
                self._deliver_gateway([sent])
        elif name == "gateway_send_all":  # newest peer first: deadlines tie in reverse order
            for j in reversed(range(CLIENTS)):
                packet = ipv4_packet(GATEWAY_INNER, _client_inner(j))
                sent = self.gateway.handle_packet(packet, self.now)
                self.trace.append(("sent", sent))
                if sent is not None:
                    self._deliver_gateway([sent])
        elif name == "remove":
            self.gateway.remove_peer(public_key(_key(100 + i)))
        elif name == "add":
            self.add(i, keepalive=int(value))
        elif name == "lose":
            self.lost = bool(i % 2)
        self.deliver()
        g = self.gateway
        self.trace.append((op, g.next_deadline(), dict(g.counters), dict(g.drops)))

    def deliver(self) -> None:
        for _ in range(10):
            out = self.gateway.take_transmits()
            moved = bool(out)
            self._deliver_gateway(out)
            for i, client in enumerate(self.clients):
                sent = client.take_transmits()
                moved = moved or bool(sent)
                self._deliver_client(i, sent)
            if not moved:
                return

    def _deliver_gateway(self, out: list[tuple[Endpoint, bytes | bytearray]]) -> None:
        for endpoint, data in out:
            self.trace.append(("gateway->", endpoint, bytes(data)))
            if self.lost:
                continue
            i = int(endpoint[0].rsplit(".", 1)[1]) - 1
            self.clients[i].handle_datagram(data, GATEWAY_ENDPOINT, self.now)

    def _deliver_client(self, i: int, out: list[tuple[Endpoint, bytes | bytearray]]) -> None:
        for _, data in out:
            if self.lost:
                continue
            inner = self.gateway.handle_datagram(data, _client_endpoint(i), self.now)
            self.trace.append(("gateway<-", i, None if inner is None else bytes(inner)))


_seconds = st.sampled_from([0.0, 0.1, 1.0, 5.0, 5.3, 10.0, 15.2, 25.0, 120.0, 180.0]) | st.floats(
    0.0, 600.0, allow_nan=False
)
_client = st.integers(0, CLIENTS - 1)
_operation = st.one_of(
    st.tuples(st.just("advance"), st.just(0), _seconds),
    st.tuples(st.just("client_send"), _client, st.just(0.0)),
    st.tuples(st.just("gateway_send"), _client, st.just(0.0)),
    st.tuples(st.just("gateway_send_all"), st.just(0), st.just(0.0)),
    st.tuples(st.just("remove"), _client, st.just(0.0)),
    st.tuples(st.just("add"), _client, st.sampled_from([0.0, 1.0, 7.0, 25.0])),
    st.tuples(st.just("lose"), st.integers(0, 1), st.just(0.0)),
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)
@given(st.lists(_operation, max_size=40))
def test_heap_runs_the_same_timers_as_a_scan_of_every_peer(
    operations: list[tuple[str, int, float]],
) -> None:
    heap, scan = World.build(Device), World.build(ScanDevice)
    for op in operations:
        heap.apply(op)
        scan.apply(op)
        assert heap.trace == scan.trace
    # Whatever happened, the heap holds every armed timer at most twice, plus the slack.
    queue = heap.gateway._timers
    assert len(queue) <= 2 * queue.valid_entries + 64


def test_idle_device_with_100k_peers_does_no_work_per_peer() -> None:
    device = Device(None)  # no key: adding peers costs no Diffie-Hellman
    now = 1000.0
    for n in range(100_000):
        device.upsert_peer(n.to_bytes(32, "little"), now=now)
    queue = device._timers
    assert device.next_deadline() is None
    device.tick(now + 1e6)
    assert (len(queue), queue.pops) == (0, 0)  # idle: nothing queued, nothing popped

    peers = [p for n in (5, 50_000, 99_999) if (p := device.peer(n.to_bytes(32, "little")))]
    for offset, peer in enumerate(peers):
        peer.timers.persistent_keepalive = now + 25 + offset
    for _ in range(1000):  # a busy loop asking every turn; packets re-arming a timer later
        now += 0.001
        assert device.next_deadline() == 1025.0
        peers[1].timers.persistent_keepalive = now + 30
        device.tick(now)
    assert (len(queue), queue.pops) == (3, 0)

    rearmed = now + 30  # peers[1]'s deadline now; its heap entry still says 1026
    device.tick(1025.5)  # peers[0]'s timer runs
    assert (len(queue), queue.pops) == (2, 1)
    assert device.next_deadline() == 1027.0  # on the way, peers[1]'s entry moves to `rearmed`
    assert (len(queue), queue.pops) == (2, 2)
    device.tick(rearmed)
    assert (len(queue), queue.pops) == (0, 4)
    assert device.next_deadline() is None


_queue_operation = st.one_of(
    st.tuples(st.just("arm"), st.integers(0, 5), st.integers(0, 4), st.integers(0, 50)),
    st.tuples(st.just("disarm"), st.integers(0, 5), st.integers(0, 4), st.just(0)),
    st.tuples(st.just("remove"), st.integers(0, 5), st.just(0), st.just(0)),
    st.tuples(st.just("tick"), st.just(0), st.just(0), st.integers(0, 50)),
)


@settings(max_examples=300, deadline=None, database=None)
@given(st.lists(_queue_operation, max_size=60))
def test_queue_matches_a_scan_of_every_timer(operations: list[tuple[str, int, int, int]]) -> None:
    """Timers armed, moved earlier or later, disarmed and removed at random: the queue's next
    deadline and due owners are what looking at every timer gives."""
    queue: TimerQueue[int] = TimerQueue()
    timers: dict[int, PeerTimers] = {}
    now = 0
    for name, owner, kind, value in operations:
        if owner not in timers and name in ("arm", "disarm"):
            timers[owner] = PeerTimers()
            timers[owner].attach(queue, owner)
        if name == "arm":
            setattr(timers[owner], TIMER_NAMES[kind], now + value)
        elif name == "disarm":
            setattr(timers[owner], TIMER_NAMES[kind], None)
        elif name == "remove" and owner in timers:
            timers.pop(owner).detach()
        elif name == "tick":
            now += value
            expected = sorted(
                o for o, t in timers.items() if any(d is not None and d <= now for d in t.deadlines)
            )
            assert sorted(queue.pop_due(now)) == expected
            for owner_due in expected:
                expired(timers[owner_due], now)
        armed = [d for t in timers.values() for d in t.deadlines if d is not None]
        assert queue.next_deadline() == (min(armed) if armed else None)
        assert len(queue) <= 2 * queue.valid_entries + 64


def test_stale_entries_are_compacted_away() -> None:
    queue: TimerQueue[int] = TimerQueue()
    moved = PeerTimers()
    moved.attach(queue, -1)
    for step in range(1000):  # moved earlier every time: each push leaves a stale entry
        moved.send_keepalive = 10_000.0 - step
    assert len(queue) <= 2 * 1 + 64
    gone = []
    for owner in range(1000):
        timers = PeerTimers()
        timers.attach(queue, owner)
        timers.zero_key_material = 540.0 + owner
        gone.append(timers)
    for timers in gone:  # peers removed: their entries are stale
        timers.detach()
    assert len(queue) <= 2 * 1 + 64
    assert queue.next_deadline() == 10_000.0 - 999


def test_a_removed_peer_is_freed_without_the_cycle_collector() -> None:
    """The crypto process freezes its Device out of the collector's way (gcpause.py), so a
    removed peer must not be kept alive by a reference cycle."""
    wire = make_wire()
    assert wire.send_a_to_b() is not None  # sessions, index entries and timers armed
    (peer,) = wire.a.peers()
    assert any(d is not None for d in peer.timers.deadlines)
    freed = weakref.ref(peer)
    enabled = gc.isenabled()
    gc.disable()
    try:
        assert wire.a.remove_peer(peer.public_key)
        assert wire.a.take_changed_peers() == {peer}  # the stats copy's last look at it
        del peer
        assert freed() is None
    finally:
        if enabled:
            gc.enable()
