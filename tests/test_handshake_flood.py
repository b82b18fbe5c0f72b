"""A flood of handshake initiations with a valid mac1 (anyone who knows the gateway's public
key can make them) must not starve the sessions' transport data, nor make the gateway answer
each of them with a cookie reply."""

from __future__ import annotations

import ipaddress
import struct

import pytest

from gateway.dataplane.cryptoproc import HANDSHAKE_BUDGET, HANDSHAKE_QUEUE, UNDER_LOAD_QUEUED
from gateway.keys import generate_private_key
from gateway.telemetry import stats as st
from gateway.wireguard.constants import (
    COOKIE_REPLIES_BURST,
    MESSAGE_RESPONSE,
    MESSAGE_TRANSPORT,
)
from gateway.wireguard.device import Device, Packet
from gateway.wireguard.drops import Drop
from gateway.wireguard.ratelimiter import PACKETS_BURSTABLE
from testbed.wire import A_ENDPOINT, A_INNER, B_ENDPOINT, B_INNER, flood_initiation, ipv4_packet
from tests.dataplane_fakes import Endpoint, LoopGateway, established

START = 1000.0


def test_under_load_cookies_are_limited_per_flow_never_per_address() -> None:
    # A flooder behind a client's NAT must not spend the client's cookie (issue 19): cookie
    # replies are limited per flow (address and port) and by the link's budget.
    gateway = Device(generate_private_key(), under_load_threshold=0)  # under load at once
    assert gateway.public_key is not None
    flooder = ("203.0.113.9", 40000)
    for i in range(50):
        gateway.handle_datagram(flood_initiation(gateway.public_key), flooder, START + i / 1000)
    assert gateway.counters["cookie_replies_sent"] == PACKETS_BURSTABLE
    assert gateway.drops[Drop.UNDER_LOAD_COOKIE] == 50
    assert gateway.drops[Drop.RATE_LIMITED] == 0  # no mac2: the per-address budget is unspent
    client = ("203.0.113.9", 51820)  # the same address, its own port
    gateway.handle_datagram(flood_initiation(gateway.public_key), client, START + 0.1)
    assert len([d for d, _ in gateway.take_transmits() if d == client]) == 1
    sources = [("203.0.113.9", 1000 + i) for i in range(COOKIE_REPLIES_BURST + 10)]
    before = gateway.counters["cookie_replies_sent"]
    for source in sources:  # one instant, many flows: the link's burst, then none
        gateway.handle_datagram(flood_initiation(gateway.public_key), source, START + 1)
    assert gateway.counters["cookie_replies_sent"] - before == COOKIE_REPLIES_BURST


def _established(slots: int) -> tuple[LoopGateway, LoopGateway]:
    return established(START, slots)


def test_a_flood_of_initiations_never_holds_up_a_sessions_transport_packets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    a, b = _established(slots=512)
    now = START + 1
    packets = [ipv4_packet(A_INNER, B_INNER, struct.pack("!I", i) * 8) for i in range(40)]
    a.rings.from_workers[0].send_many(packets)
    a.run(now)
    transport = [d for _, d in a.udp_out()]
    assert len(transport) == len(packets)
    gateway_key = b.device.public_key
    assert gateway_key is not None
    flood = [flood_initiation(gateway_key) for _ in range(10 * len(transport))]
    sources = [(f"203.0.113.{i % 50 + 1}", 40000 + i) for i in range(len(flood))]
    for i, datagram in enumerate(transport):  # ten initiations before every data packet
        for j in range(10 * i, 10 * i + 10):
            assert b.udp_in([flood[j]], sources[j]) == 1
        assert b.udp_in([datagram], A_ENDPOINT) == 1

    handled: list[int] = []  # handshake messages the Device worked on, per turn
    handle_datagram = b.device.handle_datagram

    def counting(
        data: Packet, src: Endpoint, now: float, *, arrived: float | None = None
    ) -> bytes | bytearray | None:
        if data[0] != MESSAGE_TRANSPORT:
            handled[-1] += 1
        return handle_datagram(data, src, now, arrived=arrived)

    monkeypatch.setattr(b.device, "handle_datagram", counting)
    delivered: list[bytes] = []
    while len(b.rings.from_udp):  # until the gateway has read every datagram
        handled.append(0)
        assert b.loop.turn(now)
        delivered += [p for w in b.tun_out() for p in w]
    assert sorted(delivered) == sorted(packets)  # every one, by the time the ring is read
    assert max(handled) <= HANDSHAKE_BUDGET
    queued = len(b.loop.handshakes)
    assert 0 < queued <= HANDSHAKE_QUEUE
    dropped = b.loop.handshakes_dropped
    assert dropped > 0
    assert b.counters[st.DROP_RATE_LIMITED] >= dropped
    assert sum(handled) + queued + dropped == len(flood)  # each one handled, waiting or counted
    handled.append(0)
    while b.loop.turn(now):  # the rest waits for later turns, a budget at a time
        handled.append(0)
    assert not b.loop.handshakes
    assert max(handled) <= HANDSHAKE_BUDGET


def test_one_flooding_host_takes_few_places_in_the_queue_and_a_client_still_gets_in() -> None:
    a, b = _established(slots=512)
    now = START + 1
    gateway_key = b.device.public_key
    assert gateway_key is not None
    flood = [flood_initiation(gateway_key) for _ in range(400)]
    assert b.udp_in(flood, ("203.0.113.9", 40000)) == len(flood)
    client_key = a.device.private_key  # the client restarts and initiates a new session
    assert client_key is not None
    client = Device(client_key)
    client.upsert_peer(
        gateway_key,
        endpoint=B_ENDPOINT,
        allowed_ips=[ipaddress.ip_network(f"{B_INNER}/32")],
        now=now,
    )
    assert client.handle_packet(ipv4_packet(A_INNER, B_INNER), now) is None  # staged
    ((_, initiation),) = client.take_transmits()
    assert b.udp_in([initiation], A_ENDPOINT) == 1
    b.run(now)
    # Each of the 5 turns that read the ring (100 a turn) frees HANDSHAKE_BUDGET places; past
    # UNDER_LOAD_QUEUED the flooding host has only its burst (the clock does not move).
    queued_at_most = UNDER_LOAD_QUEUED + PACKETS_BURSTABLE + 5 * HANDSHAKE_BUDGET
    assert b.loop.handshakes_dropped >= len(flood) - queued_at_most
    responses = [d for dst, d in b.udp_out() if dst == A_ENDPOINT and d[0] == MESSAGE_RESPONSE]
    assert len(responses) == 1
