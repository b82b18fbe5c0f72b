"""In-memory stand-ins for the data plane's shared memory, to drive crypto loops in tests.

`MemoryRing` is a bounded SPSC ring with shm_ring.Ring's producer/consumer semantics (the
loop's `PacketRing` interface): fixed slots, send_many takes what fits, recv_many returns
views into the slots that stay valid until release(). Released slots are overwritten with
POISON, so a packet used after release shows up as corrupted instead of passing by luck.

`LoopGateway` is one gateway's crypto loop on such rings; `shuttle` is the network between
two of them (it carries datagrams from one's UDP ring into the other's, with the sender's
endpoint as the source, as the UDP process would).

`FakeUdpSocket` is the UDP process's socket (gateway.udp_io.UdpIo's `recv_batch` and
`send_batch`) with a send buffer of a size the test sets.
"""

from __future__ import annotations

import ipaddress
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from gateway.dataplane.cryptoproc import CryptoLoop
from gateway.dataplane.framing import HEADER_SIZE, decode_endpoint, encode_endpoint
from gateway.dataplane.rings import CryptoRings
from gateway.dataplane.transport import new_transport
from gateway.endpoint import Endpoint
from gateway.keys import generate_private_key, public_key
from gateway.telemetry import stats as st
from gateway.udp_io import Datagram, SendStats, UdpCounters
from gateway.wireguard.device import Device
from shm_ring.ring import Ring
from testbed.wire import A_ENDPOINT, A_INNER, B_ENDPOINT, B_INNER, ipv4_packet

POISON = 0xEE
SLOT_SIZE = 1600  # room for a 1500-byte inner packet plus WireGuard's overhead and the header


class MemoryRing:
    """A bounded in-memory ring; one producer and one consumer (the test drives both)."""

    def __init__(self, slots: int = 64, slot_size: int = SLOT_SIZE) -> None:
        self.slots = slots
        self.slot_size = slot_size
        # One slot per message: the shm ring's messages spanning slots are its own tests' job.
        self.max_message = slot_size
        self._data = bytearray(slots * slot_size)
        self._view = memoryview(self._data)
        self._lengths = [0] * slots
        self._head = 0  # packets ever published
        self._tail = 0  # packets ever released
        self._pending = 0  # received and not yet released
        self.full_events = 0

    def __len__(self) -> int:
        """Packets in the ring (published, not released)."""
        return self._head - self._tail

    def send_ready(self) -> bool:
        return self._head - self._tail < self.slots

    def free_slots(self) -> int:
        return self.slots - (self._head - self._tail)

    def send(self, data: bytes | bytearray | memoryview) -> bool:
        return self.send_many([data]) == 1

    def send_many(self, packets: Sequence[bytes | bytearray | memoryview]) -> int:
        room = self.free_slots()
        if len(packets) > room:
            packets = packets[:room]
            self.full_events += 1
        for i, packet in enumerate(packets):
            if not 0 < len(packet) <= self.slot_size:
                raise ValueError(
                    f"packet {i} of {len(packet)} bytes: ring packets must be 1..{self.slot_size}"
                )
        for packet in packets:
            slot = self._head % self.slots
            start = slot * self.slot_size
            self._data[start : start + len(packet)] = packet
            self._lengths[slot] = len(packet)
            self._head += 1
        return len(packets)

    def recv_many(self, max_packets: int = 100) -> list[memoryview]:
        start = self._tail + self._pending
        count = min(self._head - start, max_packets)
        if count <= 0:
            return []
        self._pending += count
        views = []
        for index in range(start, start + count):
            slot = index % self.slots
            offset = slot * self.slot_size
            views.append(self._view[offset : offset + self._lengths[slot]])
        return views

    def release(self) -> None:
        for index in range(self._tail, self._tail + self._pending):
            offset = index % self.slots * self.slot_size
            self._data[offset : offset + self.slot_size] = bytes([POISON]) * self.slot_size
        self._tail += self._pending
        self._pending = 0

    def drain(self) -> list[bytes]:
        """Every packet in the ring, copied, and released."""
        packets = [bytes(p) for p in self.recv_many(self.slots)]
        self.release()
        return packets


class ShmTestRing(Ring):
    """An shm_ring ring with MemoryRing's test conveniences: the transport's batches (native
    or Python) run only on shm rings."""

    def __len__(self) -> int:
        return self.stats().occupancy

    def drain(self) -> list[bytes]:
        packets = [bytes(p) for p in self.recv_many(self.slots)]
        self.release()
        return packets

    @property
    def full_events(self) -> int:
        return self.stats().full_events


@dataclass
class LoopBackend:
    """How LoopGateways run: "memory" (in-memory rings, every packet through the Device),
    or "native" / "python" (shm rings and the transport's batches); tests set `name`."""

    name: str = "memory"

    def device(self, private_key: bytes) -> Device:
        """A Device whose sessions are this backend's transport (when it has one)."""
        if self.name == "memory":
            return Device(private_key)
        return Device(private_key, transport=new_transport(self.name))

    def ring(self, slots: int) -> MemoryRing:
        if self.name == "memory":
            return MemoryRing(slots)
        # Typed as MemoryRing: the same test methods (drain, len, send) on an shm ring.
        return ShmTestRing.create("loop-test", slots=slots, slot_size=SLOT_SIZE)  # type: ignore[return-value] # as said above


BACKEND = LoopBackend()


def counter_block() -> memoryview:
    """A process's counter block, as gateway.telemetry.stats lays it out, in plain memory."""
    return memoryview(bytearray(8 * st.PROCESS_BLOCK_WORDS)).cast("Q")


def peer_table(max_peers: int = 16) -> st.PeerTable:
    raw = memoryview(bytearray(8 * st.PEER_SLOT_WORDS * max_peers))
    return st.PeerTable(raw.cast("Q"), raw, max_peers)


@dataclass(eq=False)  # compared and hashed by identity: tests key dicts by gateway
class LoopGateway:
    """One gateway's crypto loop on in-memory rings; `endpoint` is its address on the wire."""

    device: Device
    endpoint: Endpoint
    workers: int = 2
    slots: int = 64
    counters: memoryview = field(default_factory=counter_block)
    resource_table: st.ResourceTable | None = None
    keep_timestamps: Callable[[Mapping[bytes, bytes]], None] | None = None
    rings: CryptoRings[MemoryRing] = field(init=False)
    loop: CryptoLoop[MemoryRing] = field(init=False)

    def __post_init__(self) -> None:
        ring = BACKEND.ring
        self.rings = CryptoRings(
            from_udp=ring(self.slots),
            to_udp=ring(self.slots),
            from_workers=[ring(self.slots) for _ in range(self.workers)],
            to_workers=[ring(self.slots) for _ in range(self.workers)],
        )
        self.loop = CryptoLoop(
            self.device,
            self.rings,
            self.counters,
            peer_table(),
            resource_table=self.resource_table,
            keep_timestamps=self.keep_timestamps,
        )

    def run(self, now: float, max_turns: int = 1000) -> int:
        """Turn until a turn takes nothing, then prepare to sleep, as run_crypto does;
        returns how many turns found work."""
        for busy in range(max_turns):
            if not self.loop.turn(now):
                self.loop.idle_timeout(now)
                return busy
        raise AssertionError(f"crypto loop still busy after {max_turns} turns")

    def tun_out(self) -> list[list[bytes]]:
        """Per worker: the packets the loop handed to that worker's TUN queue."""
        return [ring.drain() for ring in self.rings.to_workers]

    def udp_out(self) -> list[tuple[Endpoint, bytes]]:
        """The datagrams the loop handed to the UDP process, with their destinations."""
        return [(decode_endpoint(m), m[HEADER_SIZE:]) for m in self.rings.to_udp.drain()]

    def udp_in(self, datagrams: Iterable[bytes], src: Endpoint) -> int:
        """Datagrams from `src` into the loop's UDP ring, as many as fit; returns how many."""
        header = encode_endpoint(src)
        return self.rings.from_udp.send_many([header + d for d in datagrams])


def shuttle(a: LoopGateway, b: LoopGateway) -> int:
    """Carry each side's outgoing datagrams to the other (up to the room there); returns
    how many moved. Datagrams that do not fit stay in the sender's ring."""
    moved = 0
    for src, dst in ((a, b), (b, a)):
        outgoing = src.rings.to_udp
        batch = outgoing.recv_many(dst.rings.from_udp.free_slots())
        for message in batch:
            if decode_endpoint(message) != dst.endpoint:
                raise AssertionError(f"{src.endpoint} sent to {decode_endpoint(message)}")
        moved += dst.udp_in([bytes(m[HEADER_SIZE:]) for m in batch], src.endpoint)
        outgoing.release()
    return moved


def run_until_quiet(a: LoopGateway, b: LoopGateway, now: float, max_rounds: int = 1000) -> None:
    """Turn both loops and carry datagrams between them until nothing moves."""
    for _ in range(max_rounds):
        busy = a.run(now) + b.run(now)
        if not shuttle(a, b) and not busy:
            return
    raise AssertionError(f"gateways still exchanging after {max_rounds} rounds")


class KeyBoard:
    """Where the crypto process publishes the interface's public key (the stats header)."""

    public_key: bytes | None = None


class FakeUdpSocket:
    """A UDP socket in memory: `arrive()` plays the network, `sent` is what left.

    `room` is how many more datagrams the send buffer takes (None: unbounded); a send
    beyond it stops there, blocked, as a full socket buffer does.
    """

    def __init__(self, room: int | None = None) -> None:
        self.room = room
        self.counters = UdpCounters()
        self.sent: list[tuple[Endpoint, bytes]] = []
        self._arrived: deque[tuple[memoryview, Endpoint]] = deque()

    def arrive(self, datagram: bytes, src: Endpoint) -> None:
        self._arrived.append((memoryview(datagram), src))

    def waiting(self) -> int:
        """Datagrams not yet read (still in the socket's receive buffer)."""
        return len(self._arrived)

    def recv_batch(self, max_datagrams: int) -> list[tuple[memoryview, Endpoint]]:
        count = min(max_datagrams, len(self._arrived))
        return [self._arrived.popleft() for _ in range(count)]

    def send_batch(self, items: Sequence[tuple[Endpoint, Datagram]]) -> SendStats:
        fits = len(items) if self.room is None else min(self.room, len(items))
        for dest, data in items[:fits]:
            self.sent.append((dest, bytes(data)))
        if self.room is not None:
            self.room -= fits
        return SendStats(consumed=fits, sent=fits, syscalls=1, blocked=fits < len(items))


def established(now: float, slots: int = 64) -> tuple[LoopGateway, LoopGateway]:
    """A client (A, the session's initiator) with a session to the gateway (B), whose UDP
    ring has `slots` slots: one packet from A got through at `now`."""
    key_a, key_b = generate_private_key(), generate_private_key()
    client, gateway = Device(key_a), Device(key_b)
    client.upsert_peer(
        public_key(key_b),
        endpoint=B_ENDPOINT,
        allowed_ips=[ipaddress.ip_network(f"{B_INNER}/32")],
        now=now,
    )
    gateway.upsert_peer(
        public_key(key_a), allowed_ips=[ipaddress.ip_network(f"{A_INNER}/32")], now=now
    )
    a, b = LoopGateway(client, A_ENDPOINT), LoopGateway(gateway, B_ENDPOINT, slots=slots)
    first = ipv4_packet(A_INNER, B_INNER, b"hello")
    a.rings.from_workers[0].send(first)
    run_until_quiet(a, b, now)
    assert [p for w in b.tun_out() for p in w] == [first]
    return a, b
