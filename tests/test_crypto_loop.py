"""Two gateways' crypto loops on in-memory rings, joined by a shuttle instead of a network.

No root, no namespaces, no processes: each test drives `CryptoLoop.turn` with a fake clock,
as wireguard-go's tests run two devices over in-memory TUNs and binds.
"""

from __future__ import annotations

import ipaddress
import random
import struct
from collections.abc import Iterator

import pytest

from gateway.dataplane.firewall import Firewall
from gateway.dataplane.flow import flow_worker
from gateway.endpoint import StickyEndpoint, local_address
from gateway.keys import generate_private_key, public_key
from gateway.nat.handler import ProxyHandler, Target
from gateway.policy import Policy
from gateway.resources.resource import Resource, parse_resource_address
from gateway.telemetry import stats as st
from gateway.wireguard.constants import KEEPALIVE_TIMEOUT
from ippacket.build import udp_packet
from testbed.wire import A_ENDPOINT, A_INNER, B_ENDPOINT, B_INNER, ipv4_packet
from tests.dataplane_fakes import BACKEND, LoopGateway, run_until_quiet, shuttle

START = 1000.0


@pytest.fixture(autouse=True, params=["memory", "native", "python"])
def loop_backend(request: pytest.FixtureRequest) -> Iterator[str]:
    """Every test on in-memory rings (each packet through the Device) and on shm rings with
    the transport's batches, native and pure Python."""
    name: str = request.param
    if name == "native":
        try:
            from gateway import _native  # noqa: F401, PLC0415 - probing
        except ImportError:
            pytest.skip("the native extension is not built")
    BACKEND.name = name
    yield name
    BACKEND.name = "memory"


DROP_SLOTS = range(st.DROP_BASE, st.DROP_BASE + len(st.DROP_REASONS))


def _gateways(slots: int = 64) -> tuple[LoopGateway, LoopGateway]:
    """A (knows B's endpoint, as a client) and B (learns A's from the handshake)."""
    key_a, key_b = generate_private_key(), generate_private_key()
    device_a, device_b = BACKEND.device(key_a), BACKEND.device(key_b)
    device_a.upsert_peer(
        public_key(key_b), endpoint=B_ENDPOINT, allowed_ips=[_net(B_INNER)], now=START
    )
    device_b.upsert_peer(public_key(key_a), allowed_ips=[_net(A_INNER)], now=START)
    return LoopGateway(device_a, A_ENDPOINT, slots=slots), LoopGateway(device_b, B_ENDPOINT)


def _net(address: str) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(f"{address}/32")


def _udp(src: str, dst: str, sport: int, seq: int, size: int = 100) -> bytes:
    """An IPv4/UDP packet of `size` bytes whose payload names its flow and sequence number."""
    body = struct.pack("!HI", sport, seq).ljust(size - 28, b"%c" % (seq % 251))
    return ipv4_packet(src, dst, struct.pack("!HHHH", sport, 9000, 8 + len(body), 0) + body)


def _established() -> tuple[LoopGateway, LoopGateway]:
    a, b = _gateways()
    first = _udp(A_INNER, B_INNER, 1000, 0)
    assert a.rings.from_workers[0].send(first)
    run_until_quiet(a, b, START)
    assert _arrived(b) == [first]
    return a, b


def _arrived(gateway: LoopGateway) -> list[bytes]:
    """What the loop handed to any worker, in each worker's order."""
    return [packet for packets in gateway.tun_out() for packet in packets]


def _drops(gateway: LoopGateway) -> dict[int, int]:
    return {slot: gateway.counters[slot] for slot in DROP_SLOTS if gateway.counters[slot]}


def test_a_handshake_then_many_packets_each_way_arrive_intact_and_in_flow_order() -> None:
    a, b = _established()
    assert a.counters[st.HANDSHAKES_INITIATED] == 1
    assert a.counters[st.HANDSHAKES_COMPLETED] == b.counters[st.HANDSHAKES_COMPLETED] == 1
    flows = range(2000, 2008)
    to_b = [_udp(A_INNER, B_INNER, flows[i % 8], i, 60 + i * 7 % 1400) for i in range(400)]
    to_a = [_udp(B_INNER, A_INNER, flows[i % 8], i, 60 + i * 11 % 1400) for i in range(400)]
    pending = {a: list(to_b), b: list(to_a)}
    received: dict[LoopGateway, list[list[bytes]]] = {a: [[], []], b: [[], []]}
    now = START
    for _ in range(200):
        for gateway, packets in pending.items():
            # Like two TUN queues: the kernel spreads flows over them.
            for worker, ring in enumerate(gateway.rings.from_workers):
                mine = [p for p in packets if p[21] % 2 == worker]  # low byte of the port
                taken = mine[: ring.free_slots()]
                ring.send_many(taken)
                for packet in taken:
                    packets.remove(packet)
        a.run(now)
        b.run(now)
        shuttle(a, b)
        for gateway in (a, b):
            for worker, packets in enumerate(gateway.tun_out()):
                received[gateway][worker] += packets
        if not pending[a] and not pending[b] and sum(map(len, received[b] + received[a])) == 800:
            break
        now += 0.002
    for gateway, sent in ((b, to_b), (a, to_a)):
        for worker, packets in enumerate(received[gateway]):
            assert all(flow_worker(p, 2) == worker for p in packets)  # one flow, one worker
        for sport in flows:
            flow = [p for p in sent if p[20:22] == struct.pack("!H", sport)]
            got = [p for w in received[gateway] for p in w if p[20:22] == struct.pack("!H", sport)]
            assert got == flow  # every packet, byte for byte, in order
    assert _drops(a) == _drops(b) == {}


def test_a_full_udp_ring_stops_encryption_without_loss_until_room_frees() -> None:
    a, b = _established()
    to_udp = a.rings.to_udp
    assert to_udp.send_many([b"backlog"] * to_udp.slots) == to_udp.slots
    worker_ring = a.rings.from_workers[1]
    packets = [_udp(A_INNER, B_INNER, 3000, i) for i in range(10)]
    assert worker_ring.send_many(packets) == 10
    assert a.loop.turn(START) is False  # took nothing and returned: it never waits
    assert len(worker_ring) == 10  # still queued for later, nothing lost
    assert a.loop.idle_timeout(START) is not None  # wakes for the stats tick at the latest
    assert _drops(a) == {}
    assert to_udp.drain() == [b"backlog"] * to_udp.slots  # the UDP process catches up
    assert a.loop.turn(START) is True
    assert len(worker_ring) == 0
    run_until_quiet(a, b, START)
    assert _arrived(b) == packets
    assert _drops(a) == _drops(b) == {}


def test_what_timers_cannot_put_into_a_full_udp_ring_is_counted() -> None:
    _, b = _established()  # B received data and sent none: it owes A a keepalive
    to_udp = b.rings.to_udp
    to_udp.send_many([b"backlog"] * to_udp.slots)
    b.run(START + KEEPALIVE_TIMEOUT + 1)
    assert b.device.counters["keepalives_sent"] == 1
    assert _drops(b) == {st.DROP_RING_FULL: 1}
    assert to_udp.drain() == [b"backlog"] * to_udp.slots  # the keepalive is not in there


def test_a_full_worker_ring_stops_decryption_without_loss_until_room_frees() -> None:
    a, b = _established()
    packets = [_udp(A_INNER, B_INNER, 4000, i) for i in range(10)]
    a.rings.from_workers[0].send_many(packets)
    a.run(START)
    datagrams = [d for _, d in a.udp_out()]
    worker_ring = b.rings.to_workers[flow_worker(packets[0], 2)]
    worker_ring.send_many([b"backlog"] * (worker_ring.slots - 3))
    assert b.udp_in(datagrams, A_ENDPOINT) == 10
    assert b.loop.turn(START) is True  # takes only the three that fit
    assert len(b.rings.from_udp) == 7
    assert b.loop.turn(START) is False  # full: takes nothing more and returns
    assert len(b.rings.from_udp) == 7  # still queued for later, nothing lost
    delivered = worker_ring.drain()
    assert delivered[:-3] == [b"backlog"] * (worker_ring.slots - 3)
    b.run(START)
    assert delivered[-3:] + _arrived(b) == packets
    assert _drops(b) == {}


def test_datagrams_reordered_within_the_replay_window_all_arrive_and_a_replay_is_dropped() -> None:
    a, b = _established()
    packets = [_udp(A_INNER, B_INNER, 5000 + i % 4, i) for i in range(300)]
    datagrams: list[bytes] = []
    for start in range(0, len(packets), 50):  # within the ring's 64 slots
        a.rings.from_workers[0].send_many(packets[start : start + 50])
        a.run(START)
        datagrams += [d for dst, d in a.udp_out() if dst == B_ENDPOINT]
    assert len(datagrams) == len(packets)
    random.Random(1).shuffle(datagrams)
    received = []
    for start in range(0, len(datagrams), 50):
        assert b.udp_in(datagrams[start : start + 50], A_ENDPOINT) == 50
        b.run(START)
        received += _arrived(b)
    assert sorted(received) == sorted(packets)
    assert _drops(b) == {}
    b.udp_in([datagrams[123]], A_ENDPOINT)
    b.run(START)
    assert b.tun_out() == [[], []]
    assert _drops(b) == {st.DROP_REPLAY: 1}


def test_a_ring_message_without_an_endpoint_header_is_counted_not_fatal() -> None:
    a, b = _established()
    b.rings.from_udp.send_many([b"\x09" + bytes(40), b"\x04"])
    b.run(START)
    assert _drops(b) == {st.DROP_MALFORMED: 2}
    packet = _udp(A_INNER, B_INNER, 6000, 1)
    a.rings.from_workers[0].send(packet)
    run_until_quiet(a, b, START)
    assert _arrived(b) == [packet]  # the loop goes on


def test_a_packet_to_a_proxy_address_is_translated_both_ways_and_refusals_reach_the_peer() -> None:
    """The gateway's loop with a firewall and a proxy handler: a client's UDP packet to the
    proxy address leaves the TUN for the real host, the reply comes back from the proxy, a
    packet to an unmapped proxy address gets ICMP unreachable, and the NAT entry expires on
    the loop's own timer."""
    key_client, key_gateway = generate_private_key(), generate_private_key()
    client, gateway_device = BACKEND.device(key_client), BACKEND.device(key_gateway)
    client.upsert_peer(
        public_key(key_gateway),
        endpoint=B_ENDPOINT,
        allowed_ips=[ipaddress.ip_network("0.0.0.0/0")],
        now=START,
    )
    gateway_device.upsert_peer(public_key(key_client), allowed_ips=[_net(A_INNER)], now=START)
    a, b = LoopGateway(client, A_ENDPOINT), LoopGateway(gateway_device, B_ENDPOINT)
    resources = [Resource("app", parse_resource_address("app.corp.test"))]
    firewall = Firewall(Policy(resources, {public_key(key_client): ["app"]}), gateway_device)
    proxy = ProxyHandler(resources, {public_key(key_client): frozenset({0})}, firewall.reply)
    real, proxy_v4 = ipaddress.IPv4Address("10.98.0.5"), ipaddress.IPv4Address("100.96.0.1")
    proxy.apply(proxy_v4, ipaddress.IPv6Address("fd00:2021:1111:8000::1"), Target(0, (real,), ()))
    firewall.set_proxy_handler(proxy)
    b.loop.firewall, b.loop.proxy = firewall, proxy

    client_ip = ipaddress.IPv4Address(A_INNER)
    query = bytes(udp_packet(client_ip, proxy_v4, 5353, 53, b"query").data)
    a.rings.from_workers[0].send(query)
    run_until_quiet(a, b, START)
    (forwarded,) = _arrived(b)
    assert forwarded[16:20] == real.packed and forwarded[12:16] == client_ip.packed

    answer = bytes(udp_packet(real, client_ip, 53, 5353, b"answer").data)
    b.rings.from_workers[0].send(answer)
    run_until_quiet(a, b, START + 0.1)
    (answered,) = _arrived(a)
    assert answered[12:16] == proxy_v4.packed and answered.endswith(b"answer")

    unmapped = ipaddress.IPv4Address("100.96.0.99")
    a.rings.from_workers[0].send(bytes(udp_packet(client_ip, unmapped, 1, 2, b"?").data))
    run_until_quiet(a, b, START + 0.2)
    (refusal,) = _arrived(a)
    assert refusal[9] == 1 and refusal[20] == 3  # ICMP destination unreachable
    assert refusal[12:16] == unmapped.packed
    assert _arrived(b) == []

    assert len(proxy.table) == 1
    b.run(START + 0.1 + 120.0)  # the answered UDP flow's 2 minutes
    assert len(proxy.table) == 0


def test_nat_counters_reach_the_crypto_processs_block_once_a_second() -> None:
    key = generate_private_key()
    device = BACKEND.device(key)
    gateway = LoopGateway(device, B_ENDPOINT)
    resources = [Resource("app", parse_resource_address("app.corp.test"))]
    proxy = ProxyHandler(resources, {}, lambda _packet: None)
    gateway.loop.proxy = proxy
    proxy.counters["translated_out"] = 4
    proxy.counters["not_granted"] = 2
    gateway.run(START)
    names = st.NAT_COUNTER_NAMES
    assert gateway.counters[st.NAT_BASE + names.index("translated_out")] == 4
    assert gateway.counters[st.NAT_BASE + names.index("refused")] == 2
    proxy.counters["translated_out"] = 5
    gateway.run(START + 0.5)  # not yet: once a second
    assert gateway.counters[st.NAT_BASE + names.index("translated_out")] == 4
    gateway.run(START + 1.0)
    assert gateway.counters[st.NAT_BASE + names.index("translated_out")] == 5


def test_replies_leave_from_the_local_address_of_the_latest_authenticated_datagram() -> None:
    """Issue #15: B's UDP process says at which of B's addresses A's datagrams arrive; what B
    sends back to A names that address as its source, until an authenticated datagram
    arrives elsewhere or A's endpoint is set by hand (a forged one changes nothing)."""
    second, third = bytes([192, 0, 2, 2]), bytes([192, 0, 2, 3])
    a, b = _gateways()
    a.endpoint = StickyEndpoint(*A_ENDPOINT, second)  # A writes to B's second address
    a.rings.from_workers[0].send(_udp(A_INNER, B_INNER, 1000, 0))
    run_until_quiet(a, b, START)  # B's handshake response came from `second` too

    def b_replies_from() -> list[bytes]:
        assert b.rings.from_workers[0].send(_udp(B_INNER, A_INNER, 1000, 1))
        b.run(START)
        return [local_address(dest) for dest, _ in b.udp_out()]

    assert b_replies_from() == [second]
    # A datagram that does not authenticate, "from A" at another address: ignored.
    forged = struct.pack("<IIQ", 4, 0xDEAD, 0) + bytes(32)
    b.udp_in([forged], StickyEndpoint(*A_ENDPOINT, third))
    b.run(START)
    assert b_replies_from() == [second]
    # Authenticated at the third address (A roamed there): replies follow.
    a.endpoint = StickyEndpoint(*A_ENDPOINT, third)
    a.rings.from_workers[0].send(_udp(A_INNER, B_INNER, 1000, 2))
    run_until_quiet(a, b, START)
    assert b_replies_from() == [third]
    # `wg set ... endpoint` (a plain endpoint): the kernel chooses the source again.
    [peer] = b.device.peers()
    b.device.upsert_peer(peer.public_key, endpoint=A_ENDPOINT, now=START)
    assert b_replies_from() == [b""]
