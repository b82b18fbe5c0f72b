"""Proxy mappings from the DNS process to the crypto process: applied, then acknowledged."""

from __future__ import annotations

import functools
import ipaddress

import dns.name
import msgspec

from gateway.dataplane.mappings import (
    Applied,
    MappingPair,
    MappingSender,
    PeerAnnouncer,
    apply_message,
    encode,
    receive_mappings,
)
from gateway.dns.proxy import ProxyPair
from gateway.dns.resources import ProxyMapping
from gateway.keys import generate_private_key
from gateway.nat.handler import ProxyHandler
from gateway.resources.resource import Resource, parse_resource_address
from gateway.wireguard.device import Device
from ippacket.build import udp_packet

PROXY = ProxyPair(
    ipaddress.IPv4Address("100.96.0.1"), ipaddress.IPv6Address("fd00:2021:1111:8000::1")
)
MAPPING = ProxyMapping(
    dns.name.from_text("app.corp.test"),
    0,
    PROXY,
    (ipaddress.IPv4Address("10.98.0.5"),),
    (ipaddress.IPv6Address("fd00:98::5"),),
)
PEER = b"P" * 32


def _handler() -> ProxyHandler:
    resources = [Resource("app", parse_resource_address("app.corp.test"))]
    return ProxyHandler(resources, {PEER: frozenset({0})}, lambda _packet: None)


def test_answers_wait_for_the_mappings_sent_before_them_and_the_sender_never_blocks() -> None:
    """Issue 19: send() blocked the DNS loop up to 0.5 s per mapping (about 60 new names/s)."""
    pair = MappingPair.create()
    handler = _handler()
    released: list[int] = []
    try:
        sender = MappingSender(pair.dns, timeout=60)
        sender.when_applied(lambda: released.append(0))  # nothing in flight: at once
        for index in range(1, 301):  # more than the socket buffer holds: the rest queue
            mapping = ProxyMapping(
                MAPPING.name,
                0,
                ProxyPair(
                    ipaddress.IPv4Address(int(PROXY.v4) + index),
                    ipaddress.IPv6Address(int(PROXY.v6) + index),
                ),
                MAPPING.real_v4,
                (),
            )
            sender.send(mapping)
            sender.when_applied(functools.partial(released.append, index))
        assert released == [0] and sender.in_flight == 300
        # The crypto side applies a batch and acknowledges it once; the sender releases the
        # answers of what was applied, in order, and sends the rest as room frees.
        while sender.in_flight:
            applied = receive_mappings(pair.crypto, lambda m: apply_message(handler, m))
            assert applied > 0
            sender.receive()
            sender.flush()
    finally:
        pair.close()
    assert released == list(range(301))
    assert sender.unacknowledged == 0
    packet = udp_packet(ipaddress.IPv4Address("100.64.0.2"), PROXY.v4 + 300, 1, 53)
    out = handler.from_peer(PEER, packet, now=0.0)
    assert out is not None and bytes(out[16:20]) == bytes([10, 98, 0, 5])


def test_without_an_acknowledgement_answers_go_after_the_timeout_and_are_counted() -> None:
    pair = MappingPair.create()
    now = [0.0]
    released: list[str] = []
    try:
        sender = MappingSender(pair.dns, timeout=0.5, clock=lambda: now[0])
        sender.send(MAPPING)
        sender.when_applied(lambda: released.append("first"))
        sender.expire(0.4)
        assert released == []
        sender.expire(0.6)
        assert released == ["first"] and sender.unacknowledged == 1
        # The late acknowledgement of the first mapping does not count for the second.
        receive_mappings(pair.crypto, lambda _m: None)
        sender.send(MAPPING)
        sender.when_applied(lambda: released.append("second"))
        sender.receive()
        assert released == ["first"]
    finally:
        pair.close()


def test_a_new_crypto_process_asks_for_the_live_mappings_and_reports_the_peers() -> None:
    """Issue 19: mappings were lost when the crypto process restarted; peers moved with `wg
    set` were unknown to the DNS process."""
    pair = MappingPair.create()
    device = Device(generate_private_key())
    device.upsert_peer(PEER, allowed_ips=[ipaddress.ip_network("100.64.0.2/32")], now=0.0)
    started: list[bool] = []
    tables: list[object] = []
    try:
        sender = MappingSender(pair.dns)
        sender.on_started = lambda: started.append(True)
        sender.on_peers = tables.append
        sender.send(MAPPING)  # before the restart: this one is lost with the old process
        announcer = PeerAnnouncer(pair.crypto, device)
        handlers = announcer.started_watching({})
        assert handlers == {}
        sender.receive()
        assert started == [True]
        assert tables == [[(PEER, [ipaddress.ip_network("100.64.0.2/32")])]]
        # `wg set` moves the peer: the next look at the `wg` socket tells the DNS process.
        device.upsert_peer(
            PEER,
            allowed_ips=[ipaddress.ip_network("100.64.7.0/24")],
            replace_allowed_ips=True,
            now=1.0,
        )
        announcer.check()
        announcer.check()  # nothing changed since: nothing sent
        sender.receive()
        assert tables[1:] == [[(PEER, [ipaddress.ip_network("100.64.7.0/24")])]]
    finally:
        pair.close()


def test_malformed_records_are_skipped_and_the_next_mapping_is_applied() -> None:
    pair = MappingPair.create()
    handler = _handler()
    try:
        pair.dns.send(b"\x92\x01")  # msgpack, but not a mapping
        pair.dns.send(b"\xc1")  # not msgpack at all
        pair.dns.send(encode(7, MAPPING))
        assert receive_mappings(pair.crypto, lambda m: apply_message(handler, m)) == 1
        assert msgspec.msgpack.decode(pair.dns.recv(64), type=Applied).sequence == 7
    finally:
        pair.close()


def test_a_mapping_for_a_resource_the_crypto_side_does_not_know_is_counted_not_applied() -> None:
    handler = _handler()
    pair = MappingPair.create()
    try:
        pair.dns.send(encode(1, ProxyMapping(MAPPING.name, 5, PROXY, MAPPING.real_v4, ())))
        receive_mappings(pair.crypto, lambda m: apply_message(handler, m))
    finally:
        pair.close()
    assert handler.counters["mapping_unknown_resource"] == 1
