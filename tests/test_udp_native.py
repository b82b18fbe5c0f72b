"""The UDP loop's send side on both backends (native `udp_send_from_ring`, Python
`UdpIo.send_batch`), on real sockets: same datagrams out, same counters."""

from __future__ import annotations

import socket

import pytest

from gateway.dataplane.framing import decode_message, encode_message
from gateway.dataplane.handshake_gate import HandshakeGate
from gateway.dataplane.transport import BACKEND
from gateway.dataplane.udpproc import UdpLoop
from gateway.endpoint import Endpoint, StickyEndpoint
from gateway.telemetry import stats as st
from gateway.udp_io import UdpIo
from testbed.netns import Hosts
from tests.dataplane_fakes import FakeUdpSocket, MemoryRing, ShmTestRing, counter_block
from tests.test_udp_io import _payloads, _two_address_hosts, _wait_readable, inside

BACKENDS = [
    "python",
    pytest.param(
        "native",
        marks=pytest.mark.skipif(
            BACKEND != "native",
            reason="native backend not chosen (no extension, or FIREZONE_GW_NO_EXTENSIONS=1)",
        ),
    ),
]
COUNTED = (
    st.UDP_TX_PACKETS,
    st.UDP_TX_BYTES,
    st.GSO_BATCHES,
    st.GSO_SEGMENTS,
    st.DROP_MALFORMED,
    st.DROP_UDP_SEND_FAILED,
    st.UDP_SOURCE_FALLBACKS,
)


def _loop(
    io: UdpIo, backend: str, slot_size: int = 1280, in_slots: int = 64
) -> UdpLoop[ShmTestRing]:
    to_crypto = ShmTestRing.create("udpn-in", slots=in_slots, slot_size=1280)
    from_crypto = ShmTestRing.create("udpn-out", slots=64, slot_size=slot_size)
    assert isinstance(to_crypto, ShmTestRing) and isinstance(from_crypto, ShmTestRing)
    loop = UdpLoop(io, to_crypto, from_crypto, counter_block(), backend=backend)
    assert (loop._native is not None) == (backend == "native")
    return loop


def _close(loop: UdpLoop[ShmTestRing]) -> None:
    for ring in (loop.to_crypto, loop.from_crypto):
        ring.close()


def _receive(sock: socket.socket, count: int) -> list[tuple[bytes, str]]:
    got = []
    for _ in range(count):
        _wait_readable(sock.fileno())
        data, source = sock.recvfrom(65536)
        got.append((data, source[0]))
    return got


def test_native_sending_needs_the_native_backend_a_real_socket_and_shm_ring() -> None:
    fake = UdpLoop(FakeUdpSocket(), MemoryRing(), MemoryRing(), counter_block(), backend="native")
    assert fake._native is None
    with UdpIo(0, bind_host="127.0.0.1") as io:
        loop = _loop(io, "python")
        _close(loop)


@pytest.mark.netns
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_a_ring_batch_leaves_as_gso_runs_with_drops_counted(
    netns_hosts: Hosts, backend: str, host: str
) -> None:
    ns = netns_hosts.add("fzxun")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with inside(ns), UdpIo(0) as io, socket.socket(family, socket.SOCK_DGRAM) as peer:
        peer.bind((host, 0))
        dest: Endpoint = (host, peer.getsockname()[1])
        loop = _loop(io, backend)
        try:
            payloads = _payloads(20, 1000, 333)
            messages = [encode_message(dest, p) for p in payloads]
            messages.insert(5, b"\x04short")  # malformed: counted, the run goes on
            messages.append(encode_message((host, 0), b"port zero"))  # dropped
            messages.append(encode_message(dest, b"last"))
            assert loop.from_crypto.send_many(messages) == len(messages)
            assert loop.turn(1.0)
            got = _receive(peer, 21)
            assert [d for d, _ in got] == [*payloads, b"last"]
            c = loop.counters
            # One GSO run of 20 (the short last closes it), the port-0 one dropped, "last"
            # alone; the dropped one's bytes count as handled, as in UdpLoop's Python path.
            assert [c[i] for i in COUNTED] == [
                21,
                sum(map(len, payloads)) + len(b"port zero") + len(b"last"),
                1,
                20,
                1,
                1,
                0,
            ]
            assert len(loop.from_crypto) == 0
            assert not loop.turn(1.0)
        finally:
            _close(loop)


@pytest.mark.netns
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_message_spanning_slots_goes_through_python(netns_hosts: Hosts, backend: str) -> None:
    ns = netns_hosts.add("fzxus")
    with inside(ns), UdpIo(0) as io:
        peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        peer.bind(("127.0.0.1", 0))
        dest: Endpoint = ("127.0.0.1", peer.getsockname()[1])
        loop = _loop(io, backend, slot_size=256)
        try:
            big, small = b"b" * 600, b"s" * 100
            assert loop.from_crypto.send_many([encode_message(dest, big)]) == 1
            assert loop.from_crypto.send_many([encode_message(dest, small)]) == 1
            assert loop.turn(1.0)
            loop.turn(1.0)
            assert [d for d, _ in _receive(peer, 2)] == [big, small]
            assert loop.counters[st.UDP_TX_PACKETS] == 2
        finally:
            peer.close()
            _close(loop)


@pytest.mark.netns
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_sticky_sources_and_a_removed_one_from_the_ring(
    netns_hosts: Hosts, backend: str, family: str
) -> None:
    net = 83 if family == "ipv4" else 84
    client, gateway, link = _two_address_hosts(netns_hosts, net)
    first, second = (
        (f"10.{net}.0.1", f"10.{net}.0.2")
        if family == "ipv4"
        else (
            f"fd{net}::1",
            f"fd{net}::2",
        )
    )
    af = socket.AF_INET6 if family == "ipv6" else socket.AF_INET
    with inside(client):
        peer = socket.socket(af, socket.SOCK_DGRAM)
    with inside(gateway), UdpIo(0) as io, peer:
        peer.bind(("", 0))
        loop = _loop(io, backend)
        try:
            peer.sendto(b"hello", (second, io.port))
            _wait_readable(io.fileno())
            [(_, sender)] = [(bytes(d), ep) for d, ep in io.recv_batch(1)]
            assert isinstance(sender, StickyEndpoint)
            replies = _payloads(5, 600, 100)
            loop.from_crypto.send_many([encode_message(sender, p) for p in replies])
            assert loop.turn(1.0)
            assert _receive(peer, 5) == [(p, second) for p in replies]
            # The address is gone: the same replies leave from the kernel's choice, counted.
            gateway.ip("addr", "del", f"{second}/{64 if ':' in second else 24}", "dev", link)
            loop.from_crypto.send_many([encode_message(sender, p) for p in replies])
            assert loop.turn(1.0)
            assert _receive(peer, 5) == [(p, first) for p in replies]
            c = loop.counters
            assert c[st.UDP_SOURCE_FALLBACKS] == 1
            assert (c[st.UDP_TX_PACKETS], c[st.GSO_BATCHES]) == (10, 2)
        finally:
            _close(loop)


def _loop_with_key(io: UdpIo, backend: str) -> UdpLoop[ShmTestRing]:
    loop = _loop(io, backend, in_slots=32)  # a message of 40,960 bytes fills it
    loop.gate = HandshakeGate(lambda: bytes(range(32)))  # MAC1 checked
    assert (loop._native_rx is not None) == (backend == "native")
    return loop


@pytest.mark.netns
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_received_datagrams_reach_the_ring_framed_in_order_with_handshakes_gated(
    netns_hosts: Hosts, backend: str, host: str
) -> None:
    ns = netns_hosts.add("fzxur")
    with inside(ns), UdpIo(0) as io, UdpIo(0) as sender:
        loop = _loop_with_key(io, backend)
        try:
            burst = [b"\x04" + bytes([i]) * 999 for i in range(10)] + [b"\x04" * 300]
            # A GSO burst (coalesced by GRO), then one at a time: a transport message, an
            # initiation with a bad MAC1 (dropped), a cookie reply (admitted, in its place),
            # one spanning slots, one too big for the ring (dropped), and another.
            sender.send_batch([((host, io.port), d) for d in burst])
            singles = [
                b"\x04" + b"a" * 63,
                b"\x01" + bytes(147),
                b"\x03" + bytes(63),
                b"\x04" * 1300,  # longer than a slot: spans two
                b"\x04" * (loop.to_crypto.max_message + 1),
                b"\x04" + b"z" * 63,
            ]
            for d in singles:
                sender.send_batch([((host, io.port), d)])
            _wait_readable(io.fileno())
            deadline = 50
            while loop.counters[st.UDP_RX_PACKETS] < 17 and deadline:
                loop.turn(1.0)
                deadline -= 1
            got = [decode_message(memoryview(m)) for m in loop.to_crypto.drain()]
            assert [bytes(d) for _, d in got] == [
                *burst,
                singles[0],
                singles[2],
                singles[3],
                singles[5],
            ]
            assert {(ep[0], ep[1]) for ep, _ in got} == {(host, sender.port)}
            assert all(isinstance(ep, StickyEndpoint) for ep, _ in got)
            c = loop.counters
            assert c[st.UDP_RX_PACKETS] == 17
            assert c[st.UDP_RX_BYTES] == sum(
                map(len, [*burst, singles[0], singles[2], singles[3], singles[5]])
            )
            assert (c[st.DROP_MAC1_INVALID], c[st.DROP_TOO_BIG]) == (1, 1)
            assert io.counters.rx_datagrams == 17
            assert io.counters.rx_coalesced_reads >= 1
        finally:
            _close(loop)


@pytest.mark.netns
@pytest.mark.parametrize("backend", BACKENDS)
def test_reads_no_more_than_the_ring_has_room_for(netns_hosts: Hosts, backend: str) -> None:
    ns = netns_hosts.add("fzxuf")
    with inside(ns), UdpIo(0) as io, UdpIo(0) as sender:
        to_crypto = ShmTestRing.create("udpn-small", slots=4, slot_size=1280)
        from_crypto = ShmTestRing.create("udpn-out", slots=4, slot_size=1280)
        assert isinstance(to_crypto, ShmTestRing) and isinstance(from_crypto, ShmTestRing)
        loop = UdpLoop(io, to_crypto, from_crypto, counter_block(), backend=backend)
        try:
            burst = [b"\x04" + bytes([i]) * 99 for i in range(10)]
            sender.send_batch([(("127.0.0.1", io.port), d) for d in burst])
            _wait_readable(io.fileno())
            assert loop.turn(1.0)
            assert len(to_crypto) == 4
            assert loop.inbound_blocked()
            assert not loop.turn(1.0)
            got = to_crypto.drain()
            while len(got) < 10 and loop.turn(1.0):
                got += to_crypto.drain()
            assert [bytes(decode_message(memoryview(m))[1]) for m in got] == burst
        finally:
            for ring in (to_crypto, from_crypto):
                ring.close()
