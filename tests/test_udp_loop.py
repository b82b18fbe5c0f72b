"""The UDP process's loop, turned by hand on a fake socket and in-memory rings (no root)."""

from __future__ import annotations

import pytest

from gateway.dataplane import udpproc
from gateway.dataplane.framing import HEADER_SIZE, decode_message, encode_message
from gateway.dataplane.udpproc import UdpLoop
from gateway.endpoint import Endpoint
from gateway.telemetry import stats as st
from tests.dataplane_fakes import FakeUdpSocket, MemoryRing, counter_block

NOW = 10.0
CLIENT: Endpoint = ("198.51.100.7", 51820)
OTHER: Endpoint = ("2001:db8::7", 40000)
TRANSPORT = b"\x04\x00\x00\x00" + bytes(60)


def _udp(slots: int = 64, room: int | None = None) -> tuple[UdpLoop[MemoryRing], FakeUdpSocket]:
    sock = FakeUdpSocket(room)
    return UdpLoop(sock, MemoryRing(slots), MemoryRing(slots), counter_block()), sock


def _datagram(i: int) -> bytes:
    return TRANSPORT + bytes([i])


def test_received_datagrams_reach_the_ring_with_their_sender() -> None:
    loop, sock = _udp()
    sock.arrive(_datagram(1), CLIENT)
    sock.arrive(_datagram(2), OTHER)
    assert loop.turn(NOW)
    received = [decode_message(memoryview(m)) for m in loop.to_crypto.drain()]
    assert [(src, bytes(d)) for src, d in received] == [
        (CLIENT, _datagram(1)),
        (OTHER, _datagram(2)),
    ]
    c = loop.counters
    assert (c[st.UDP_RX_PACKETS], c[st.UDP_RX_BYTES]) == (2, 2 * len(_datagram(0)))
    assert not loop.turn(NOW)


def test_reads_no_more_than_the_ring_takes_and_the_rest_waits_in_the_socket() -> None:
    loop, sock = _udp(slots=3)
    for i in range(5):
        sock.arrive(_datagram(i), CLIENT)
    assert loop.turn(NOW)
    assert len(loop.to_crypto) == 3
    assert sock.waiting() == 2
    assert loop.inbound_blocked()
    assert not loop.turn(NOW)
    loop.to_crypto.drain()
    assert loop.turn(NOW)
    assert sock.waiting() == 0


def test_a_datagram_too_big_for_the_ring_is_dropped_and_counted() -> None:
    loop, sock = _udp()
    sock.arrive(bytes(loop.to_crypto.max_message - HEADER_SIZE + 1), CLIENT)
    sock.arrive(_datagram(1), CLIENT)
    loop.turn(NOW)
    assert len(loop.to_crypto.drain()) == 1
    assert loop.counters[st.DROP_TOO_BIG] == 1


def test_messages_from_crypto_leave_to_their_endpoint_and_malformed_ones_are_counted() -> None:
    loop, sock = _udp()
    loop.from_crypto.send_many([encode_message(CLIENT, b"a"), b"\x09", encode_message(OTHER, b"b")])
    assert loop.turn(NOW)
    assert sock.sent == [(CLIENT, b"a"), (OTHER, b"b")]
    c = loop.counters
    assert (c[st.UDP_TX_PACKETS], c[st.UDP_TX_BYTES], c[st.DROP_MALFORMED]) == (2, 2, 1)
    assert loop.from_crypto.free_slots() == loop.from_crypto.slots


def test_a_full_socket_keeps_the_rest_and_the_ring_waits_until_it_has_left() -> None:
    loop, sock = _udp(room=2)
    loop.from_crypto.send_many([encode_message(CLIENT, bytes([i])) for i in range(5)])
    assert loop.turn(NOW)
    assert [d for _, d in sock.sent] == [b"\x00", b"\x01"]
    assert len(loop.unsent) == 3
    assert len(loop.from_crypto) == 0  # the slots are released: the datagrams were copied
    loop.from_crypto.send_many([encode_message(CLIENT, b"later")])
    assert not loop.turn(NOW)  # still full: nothing leaves, the ring is not read
    assert len(loop.from_crypto) == 1
    sock.room = 10
    assert loop.turn(NOW)  # what waited leaves first, then the ring in the same turn
    assert [d for _, d in sock.sent] == [bytes([i]) for i in range(5)] + [b"later"]
    assert not loop.unsent
    assert loop.counters[st.DROP_UDP_SEND_FAILED] == 0


def test_at_most_max_unsent_datagrams_wait_and_the_rest_are_counted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(udpproc, "MAX_UNSENT", 2)
    loop, sock = _udp(room=1)
    loop.from_crypto.send_many([encode_message(CLIENT, bytes([i])) for i in range(6)])
    loop.turn(NOW)
    assert sock.sent == [(CLIENT, b"\x00")]
    assert [d for _, d in loop.unsent] == [b"\x01", b"\x02"]
    assert loop.counters[st.DROP_UDP_SEND_FAILED] == 3
