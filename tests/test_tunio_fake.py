"""FakeTun keeps the Tun contract the data plane relies on (it is a fake for other modules'
tests, so its own behaviour must match the Linux queue's)."""

from __future__ import annotations

import select

import pytest

from testbed import tun_packets
from tunio import Tun, TunError
from tunio.fake import FakeTun

PACKET = tun_packets.udp("10.0.0.1", 1000, "10.0.0.2", 2000, b"hello")


def test_fake_implements_the_protocol() -> None:
    tun = FakeTun()
    try:
        assert isinstance(tun, Tun)
    finally:
        tun.close()


def test_recv_many_is_bounded_ordered_and_drives_epoll() -> None:
    tun = FakeTun()
    epoll = select.epoll()
    try:
        epoll.register(tun.fileno(), select.EPOLLIN)
        assert epoll.poll(0) == []
        assert tun.recv_many() == []
        packets = [tun_packets.udp("10.0.0.1", 1000 + i, "10.0.0.2", 2000, b"x") for i in range(7)]
        for packet in packets:
            assert tun.inject(packet)
        assert epoll.poll(0)
        assert tun.recv_many(max_packets=5) == packets[:5]
        assert epoll.poll(0)  # two still waiting
        assert tun.recv_many() == packets[5:]
        assert epoll.poll(0) == []
        assert tun.stats.received == 7
    finally:
        epoll.close()
        tun.close()


def test_send_backpressure_and_rejections_are_counted() -> None:
    tun = FakeTun(capacity=2)
    try:
        assert tun.send(PACKET)
        assert tun.send(memoryview(PACKET))
        assert not tun.send_ready()
        assert not tun.send(PACKET)
        assert tun.take_sent() == [PACKET, PACKET]
        assert tun.send_ready()
        assert not tun.send(b"")
        assert not tun.send(b"\x10" + PACKET[1:])
        tun.up = False
        assert not tun.send_ready()
        assert not tun.send(PACKET)
        assert tun.stats.sent == 2
        assert tun.stats.drops() == {"rejected": 2, "would_block": 1, "device_down": 1}
    finally:
        tun.close()


def test_inbound_is_bounded() -> None:
    tun = FakeTun(capacity=1)
    try:
        assert tun.inject(PACKET)
        assert not tun.inject(PACKET)
        assert tun.recv_many() == [PACKET]
    finally:
        tun.close()
    with pytest.raises(TunError, match="capacity"):
        FakeTun(capacity=0)
