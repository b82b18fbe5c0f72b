"""Proxy mappings from the DNS process to the crypto process: applied, then acknowledged."""

from __future__ import annotations

import ipaddress
import select
import threading

import dns.name

from gateway.dataplane.mappings import (
    MappingPair,
    MappingSender,
    apply_message,
    encode,
    receive_mappings,
)
from gateway.dns.proxy import ProxyPair
from gateway.dns.resources import ProxyMapping
from gateway.nat.handler import ProxyHandler
from gateway.resources.resource import Resource, parse_resource_address
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


def test_the_sender_returns_only_after_the_crypto_side_applied_the_mapping() -> None:
    pair = MappingPair.create()
    handler = _handler()
    applied = threading.Event()

    def crypto_side() -> None:
        # Like the crypto loop: wait for the socket, apply, acknowledge.
        select.select([pair.crypto], [], [], 5)
        receive_mappings(pair.crypto, lambda m: (apply_message(handler, m), applied.set()))

    thread = threading.Thread(target=crypto_side)
    thread.start()
    try:
        assert MappingSender(pair.dns, timeout=5).send(MAPPING)
        assert applied.is_set()  # applied before send() returned
    finally:
        thread.join()
        pair.close()
    packet = udp_packet(ipaddress.IPv4Address("100.64.0.2"), PROXY.v4, 1, 53)
    out = handler.from_peer(PEER, packet, now=0.0)
    assert out is not None and bytes(out[16:20]) == bytes([10, 98, 0, 5])


def test_without_an_acknowledgement_the_sender_gives_up_after_its_timeout_and_counts() -> None:
    pair = MappingPair.create()
    try:
        sender = MappingSender(pair.dns, timeout=0.05)
        assert not sender.send(MAPPING)
        assert sender.unacknowledged == 1
        # The late acknowledgement of the first mapping does not count for the second.
        receive_mappings(pair.crypto, lambda _m: None)
        assert not sender.send(MAPPING)
        assert sender.unacknowledged == 2
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
        assert int.from_bytes(pair.dns.recv(8), "big") == 7
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
