"""Transport backends fed the same ring batches: the differential tests', the fuzz
harness's and the benchmarks' common ground (gateway/dataplane/transport.py).

`Scenario` is a gateway-side transport with a few sessions from fixed keys (so two
backends given the same scenario hold the same state) and a client-side `PyTransport` that
seals datagrams for them. `run_inbound` / `run_outbound` push one batch of ring messages
through a backend on fresh shm rings, handle every message the backend leaves to Python the
way the crypto loop would (taken out as it is and recorded), and return everything the
backend produced, byte for byte: ring contents and header words, the punted messages, drops
and per-session figures.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from gateway.dataplane.transport import Transport, new_transport
from gateway.dataplane.transport_py import PUNT, PyTransport
from shm_ring import layout as L
from shm_ring.ring import Ring

HEADER_SIZE = 36
UDP_SLOT, INNER_SLOT = HEADER_SIZE + 32 + 1280 + 16, 1280
CLIENT_ENDPOINT = bytes([4, 0, 0xCA, 0x6C, 192, 0, 2, 7]) + bytes(28)  # 192.0.2.7:51820
OTHER_ENDPOINT = bytes([4, 0, 0xCA, 0x6C, 192, 0, 2, 8]) + bytes(28)
SESSIONS = 3  # peers 1..3, one session each: local index 100 + n, remote 200 + n
CREATED = 1000.0


def client_address(peer: int, host: int = 2) -> bytes:
    return bytes([100, 64, peer, host])


def resource_address(host: int = 5) -> bytes:
    return bytes([10, 0, 0, host])


def _keys(peer: int) -> tuple[bytes, bytes]:
    """(gateway -> client key, client -> gateway key) of a peer's session."""
    return bytes([peer]) * 32, bytes([peer + 100]) * 32


def gateway_transport(backend: str, *, confirmed: bool = True) -> Transport:
    """A gateway's transport: peers 1..SESSIONS at CLIENT_ENDPOINT, allowed 100.64.<n>.0/24."""
    transport = new_transport(backend)
    routes = []
    for peer in range(1, SESSIONS + 1):
        send, recv = _keys(peer)
        transport.install(
            100 + peer,
            remote=200 + peer,
            send_key=send,
            recv_key=recv,
            created=CREATED,
            peer=peer,
            confirmed=confirmed or peer != 1,
        )
        transport.set_peer(peer, CLIENT_ENDPOINT, 100 + peer)
        routes.append((client_address(peer, 0), 24, peer))
    routes.append((bytes(16), 0, SESSIONS))  # IPv6: all to the last peer
    transport.set_routes(routes)
    return transport


def client_transport() -> PyTransport:
    """The clients' side: seals what gateway_transport opens."""
    clients = PyTransport()
    for peer in range(1, SESSIONS + 1):
        send, recv = _keys(peer)
        clients.install(
            200 + peer,
            remote=100 + peer,
            send_key=recv,
            recv_key=send,
            created=CREATED,
            peer=peer,
            confirmed=True,
        )
    return clients


def ipv4_packet(source: bytes, destination: bytes, size: int, protocol: int = 17) -> bytes:
    """An IPv4 packet of `size` bytes (>= 20) whose header says so; ports from the sizes."""
    packet = bytearray(size)
    packet[0] = 0x45
    packet[2:4] = size.to_bytes(2, "big")
    packet[9] = protocol
    packet[12:16] = source
    packet[16:20] = destination
    if size >= 24:
        packet[20:24] = (size * 7919 % 65536).to_bytes(2, "big") + b"\x00\x35"
    return bytes(packet)


def seal(clients: PyTransport, peer: int, inner: bytes, *, counter: int | None = None) -> bytes:
    """A transport datagram (no ring header) of `peer`'s session carrying `inner` as is."""
    local = 200 + peer
    if counter is not None:
        clients.advance_send_counter(local, counter)
    out = bytearray(len(inner) + 32)
    if not clients.seal(local, inner, out):
        raise ValueError("the client's counters are spent")
    return bytes(out)


def pad(inner: bytes) -> bytes:
    return inner + bytes(-len(inner) % 16)


@dataclass
class Outcome:
    """Everything a backend produced from one batch."""

    rings: list[list[bytes]]  # each output ring's messages
    words: list[list[int]]  # each ring's header words (input ring first)
    punted: list[bytes]
    stops: list[tuple[int, int]]
    drops: list[int]
    activity: list[tuple[int, int, int, int, int]]


def _ring(label: str, slots: int, slot_size: int) -> Ring:
    return Ring.create(label, slots=slots, slot_size=slot_size)


def _words(ring: Ring) -> list[int]:
    with ring.memory()[: L.HEADER_BYTES].cast("Q") as words:
        return list(words)


def _drain(ring: Ring) -> list[bytes]:
    found = [bytes(m) for m in ring.recv_many(ring.slots)]
    ring.release()
    return found


def corrupt_lengths(ring: Ring, lengths: Sequence[tuple[int, int]]) -> None:
    """Overwrite the length entries of published slots (index from the tail): what a writer
    that died or went wrong could leave."""
    with ring.memory()[L.HEADER_BYTES : L.HEADER_BYTES + 4 * ring.slots].cast("I") as lens:
        with ring.memory()[: L.HEADER_BYTES].cast("Q") as words:
            tail = words[L.W_TAIL]
        for index, value in lengths:
            lens[(tail + index) % ring.slots] = value


def half_write(ring: Ring, data: bytes, length: int) -> None:
    """Bytes and a length in the next free slot without publishing it (a producer that died
    mid-write): no consumer may ever see them."""
    with ring.memory()[: L.HEADER_BYTES].cast("Q") as words:
        slot = words[L.W_HEAD] % ring.slots
    offset = L.data_offset(ring.slots) + slot * ring.stride
    chunk = data[: ring.stride]
    ring.memory()[offset : offset + len(chunk)] = chunk
    with ring.memory()[L.HEADER_BYTES : L.HEADER_BYTES + 4 * ring.slots].cast("I") as lens:
        lens[slot] = length


def _batches_until_empty(
    source: Ring, batch: Callable[[], tuple[int, int]]
) -> tuple[list[bytes], list[tuple[int, int]]]:
    """Call `batch` until it takes nothing; each message it leaves to Python is taken out as
    the crypto loop would (recorded as it is). Returns (punted messages, each call's result)."""
    punted: list[bytes] = []
    stops: list[tuple[int, int]] = []
    for _ in range(4 * source.slots + 4):
        taken, stop = batch()
        stops.append((taken, stop))
        if stop == PUNT:
            view = source.recv_many(1)
            punted.append(bytes(view[0]))
            del view
            source.release()
        elif not taken:
            break
    return punted, stops


def run_inbound(
    transport: Transport,
    messages: Sequence[bytes],
    *,
    now: float,
    workers: int = 2,
    slots: int = 32,
    worker_slots: int = 32,
    limit: int = 100,
    lengths: Sequence[tuple[int, int]] = (),
    torn: bytes | None = None,
    packets: bool = False,
) -> Outcome:
    """`messages` into a fresh UDP ring (as many as fit), then the backend's inbound batches
    until the ring is empty; `packets`: inbound_packets (the firewall's way) instead."""
    source = _ring("udp-in", slots, UDP_SLOT)
    outputs = [_ring(f"w{i}", worker_slots, INNER_SLOT) for i in range(workers)]
    try:
        source.send_many(list(messages))
        if lengths:
            corrupt_lengths(source, lengths)
        if torn is not None:
            half_write(source, torn, len(torn))
        delivered: list[bytes] = []

        def batch() -> tuple[int, int]:
            if packets:
                taken, stop, found = transport.inbound_packets(source, limit, now, INNER_SLOT)
                delivered.extend(found)
                return taken, stop
            return transport.inbound(source, outputs, limit, now)

        punted, stops = _batches_until_empty(source, batch)
        rings = [delivered] if packets else [_drain(r) for r in outputs]
        return Outcome(
            rings=rings,
            words=[_words(r) for r in (source, *outputs)],
            punted=punted,
            stops=stops,
            drops=transport.take_drops(),
            activity=transport.take_activity(),
        )
    finally:
        for ring in (source, *outputs):
            ring.close()


def run_outbound(
    transport: Transport,
    packets: Sequence[bytes],
    *,
    now: float,
    mtu: int = 1420,
    slots: int = 32,
    udp_slots: int = 32,
    limit: int = 100,
    lengths: Sequence[tuple[int, int]] = (),
    as_list: bool = False,
) -> Outcome:
    """`packets` into a fresh worker ring (or as a list: outbound_packets), sealed into a UDP
    ring of `udp_slots` until done; a punted packet is taken out as the loop would."""
    source = _ring("worker-in", slots, INNER_SLOT)
    dest = _ring("udp-out", udp_slots, UDP_SLOT)
    try:
        punted: list[bytes] = []
        stops: list[tuple[int, int]] = []
        if as_list:
            rest = list(packets)
            while rest:
                taken, stop = transport.outbound_packets(rest, dest, now, mtu)
                stops.append((taken, stop))
                rest = rest[taken:]
                if stop != PUNT:
                    break
                punted.append(rest.pop(0))
        else:
            source.send_many(list(packets))
            if lengths:
                corrupt_lengths(source, lengths)
            punted, stops = _batches_until_empty(
                source, lambda: transport.outbound(source, dest, limit, now, mtu)
            )
        return Outcome(
            rings=[_drain(dest)],
            words=[_words(r) for r in (source, dest)],
            punted=punted,
            stops=stops,
            drops=transport.take_drops(),
            activity=transport.take_activity(),
        )
    finally:
        source.close()
        dest.close()
