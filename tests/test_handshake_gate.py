"""The UDP process's handshake gate: under load, cookies for messages without a valid mac2,
and a per-source rate only for those with one, so a flooder sharing a client's address
cannot lock the client out (issue 19, "Handshake floods, again")."""

from __future__ import annotations

import ipaddress

from gateway.dataplane.framing import HEADER_SIZE, decode_endpoint
from gateway.dataplane.handshake_gate import HandshakeGate
from gateway.dataplane.udpproc import Outgoing, frame_received
from gateway.endpoint import Endpoint
from gateway.keys import generate_private_key, public_key
from gateway.telemetry import stats as st
from gateway.wireguard.constants import (
    COOKIE_REPLIES_BURST,
    DEFAULT_UNDER_LOAD_THRESHOLD,
    MESSAGE_COOKIE_REPLY,
    MESSAGE_INITIATION,
    MESSAGE_RESPONSE,
    REKEY_TIMEOUT,
)
from gateway.wireguard.device import Device
from gateway.wireguard.ratelimiter import PACKETS_BURSTABLE
from testbed.wire import flood_initiation, ipv4_packet
from tests.dataplane_fakes import counter_block

NOW = 50.0
NAT = "203.0.113.9"  # one address for the flooder and the client (one NAT)
FLOODER = (NAT, 40000)
CLIENT = (NAT, 51820)
OTHER = ("198.51.100.7", 51820)
TRANSPORT = b"\x04\x00\x00\x00" + bytes(60)
GATEWAY_KEY = generate_private_key()
GATEWAY_PUBLIC = public_key(GATEWAY_KEY)


def _received(datagrams: list[tuple[bytes, Endpoint]]) -> list[tuple[memoryview, Endpoint]]:
    return [(memoryview(d), src) for d, src in datagrams]


def _gate() -> HandshakeGate:
    return HandshakeGate(lambda: GATEWAY_PUBLIC)


def _frame(
    gate: HandshakeGate, datagrams: list[tuple[bytes, Endpoint]], now: float
) -> tuple[list[bytes], Outgoing, memoryview]:
    counters = counter_block()
    replies: Outgoing = []
    messages = frame_received(_received(datagrams), gate, 1500, counters, now=now, replies=replies)
    return messages, replies, counters


def _flood(count: int) -> list[tuple[bytes, Endpoint]]:
    one = flood_initiation(GATEWAY_PUBLIC)
    return [(one, FLOODER)] * count


def _client() -> Device:
    client = Device(generate_private_key())
    client.upsert_peer(
        GATEWAY_PUBLIC,
        endpoint=("192.0.2.1", 51820),
        allowed_ips=[ipaddress.ip_network("10.0.0.1/32")],
        now=NOW,
    )
    return client


def _initiation(client: Device, now: float, *, retry: bool = False) -> bytes:
    if retry:
        client.tick(now)  # the retransmit timer, REKEY_TIMEOUT after the first
    else:
        assert client.handle_packet(ipv4_packet("10.0.0.2", "10.0.0.1"), now) is None
    sent = [d for _, d in client.take_transmits() if d[0] == MESSAGE_INITIATION]
    assert len(sent) == 1
    return bytes(sent[0])


def test_a_client_behind_the_flooders_address_gets_a_cookie_and_then_through() -> None:
    gate = _gate()
    messages, replies, counters = _frame(gate, _flood(1000), NOW)
    assert len(messages) == DEFAULT_UNDER_LOAD_THRESHOLD  # then under load: cookies...
    assert len(replies) == PACKETS_BURSTABLE  # ...at the flooder's flow's rate
    assert counters[st.COOKIE_REPLIES_SENT] == len(replies)
    assert counters[st.DROP_COOKIE_REQUIRED] == 1000 - len(messages)
    assert counters[st.DROP_RATE_LIMITED] == 0  # no mac2: the per-address budget is untouched

    client = _client()
    first = _initiation(client, NOW)
    soon = NOW + 0.1
    messages, replies, _ = _frame(gate, [*_flood(500), (first, CLIENT), *_flood(500)], soon)
    assert not messages
    (cookie,) = [d for dst, d in replies if dst == CLIENT]
    assert cookie[0] == MESSAGE_COOKIE_REPLY
    client.handle_datagram(bytes(cookie), ("192.0.2.1", 51820), soon)
    assert client.counters["cookie_replies_received"] == 1

    # The flood goes on; the client's retry carries mac2 and passes the gate.
    later = NOW + REKEY_TIMEOUT + 0.5
    _frame(gate, _flood(1000), later)
    retry = _initiation(client, later, retry=True)
    messages, _, counters = _frame(gate, [*_flood(100), (retry, CLIENT)], later)
    assert [decode_endpoint(m) for m in messages] == [CLIENT]
    assert messages[0][HEADER_SIZE:] == retry


def test_valid_mac2_is_rate_limited_per_source_address() -> None:
    gate = _gate()
    _frame(gate, _flood(DEFAULT_UNDER_LOAD_THRESHOLD + 1), NOW)  # under load now
    client = _client()
    _, replies, _ = _frame(gate, [(_initiation(client, NOW), CLIENT)], NOW)
    client.handle_datagram(bytes(replies[0][1]), ("192.0.2.1", 51820), NOW)
    later = NOW + REKEY_TIMEOUT + 0.5
    retry = _initiation(client, later, retry=True)  # with mac2
    # Under load again; the same valid message 20 times in one instant: the burst passes.
    flood = _flood(DEFAULT_UNDER_LOAD_THRESHOLD + 1)
    messages, replies, counters = _frame(gate, [*flood, *[(retry, CLIENT)] * 20], later)
    assert len(messages) == DEFAULT_UNDER_LOAD_THRESHOLD + PACKETS_BURSTABLE
    assert counters[st.DROP_RATE_LIMITED] == 20 - PACKETS_BURSTABLE
    assert len(replies) == 1  # the flood message past the threshold got its cookie
    messages, _, _ = _frame(gate, [(retry, OTHER)], later)  # another address: its own budget
    assert len(messages) == 0  # mac2 binds the cookie to the address and port it was made for


def test_cookie_replies_are_limited_per_flow_and_by_the_links_budget() -> None:
    gate = _gate()
    _frame(gate, _flood(DEFAULT_UNDER_LOAD_THRESHOLD), NOW)  # under load from the next one
    one = flood_initiation(GATEWAY_PUBLIC)
    _, replies, _ = _frame(gate, [(one, FLOODER)] * 50, NOW)
    assert len(replies) == PACKETS_BURSTABLE  # one flow: its burst, then its rate (20/s)
    _, replies, _ = _frame(gate, [(one, FLOODER)] * 50, NOW + 0.5)
    assert len(replies) == PACKETS_BURSTABLE  # half a second later: 10 tokens, up to the burst
    _, replies, _ = _frame(gate, [(one, CLIENT)], NOW + 0.5)
    assert len(replies) == 1  # another port of the same address has its own
    # Many flows: together no more than the link's budget at one instant.
    flows = [(one, (NAT, 1000 + i)) for i in range(COOKIE_REPLIES_BURST // PACKETS_BURSTABLE + 50)]
    _, replies, counters = _frame(gate, flows * PACKETS_BURSTABLE, NOW + 0.6)
    assert len(replies) == COOKIE_REPLIES_BURST
    assert counters[st.DROP_COOKIE_REQUIRED] == len(flows) * PACKETS_BURSTABLE


def test_bad_mac1_and_malformed_are_dropped_and_counted() -> None:
    gate = _gate()
    bad_mac1 = bytearray(flood_initiation(GATEWAY_PUBLIC))
    bad_mac1[-20] ^= 1
    short = flood_initiation(GATEWAY_PUBLIC)[:100]
    response = b"\x02\x00\x00\x00" + bytes(88)
    datagrams = [(bytes(bad_mac1), OTHER), (short, OTHER), (response, OTHER)]
    messages, replies, counters = _frame(gate, datagrams, NOW)
    assert not messages
    assert not replies
    assert counters[st.DROP_MAC1_INVALID] == 2  # the initiation's and the response's
    assert counters[st.DROP_MALFORMED] == 1
    assert response[0] == MESSAGE_RESPONSE


def test_transport_always_passes_and_an_unknown_key_passes_everything() -> None:
    gate = HandshakeGate(lambda: None)  # the crypto process has not published its key yet
    flood = _flood(1000)
    mixed = flood[:500] + [(TRANSPORT, OTHER)] * 20 + flood[500:]
    messages, replies, counters = _frame(gate, mixed, NOW)
    assert len(messages) == len(mixed)
    assert not replies
    assert counters[st.UDP_RX_PACKETS] == len(mixed)
    messages, _, _ = _frame(_gate(), mixed, NOW)
    assert [decode_endpoint(m) for m in messages].count(OTHER) == 20


def test_cookie_replies_to_us_pass_at_their_sources_rate_under_load() -> None:
    gate = _gate()
    _frame(gate, _flood(DEFAULT_UNDER_LOAD_THRESHOLD + 1), NOW)
    replies_to_us = [(bytes([MESSAGE_COOKIE_REPLY, 0, 0, 0]) + bytes(60), OTHER)] * 20
    messages, _, counters = _frame(gate, replies_to_us, NOW)
    assert len(messages) == PACKETS_BURSTABLE
    assert counters[st.DROP_RATE_LIMITED] == 20 - PACKETS_BURSTABLE


def test_below_the_load_threshold_every_handshake_message_passes() -> None:
    gate = _gate()
    burst = _flood(DEFAULT_UNDER_LOAD_THRESHOLD)  # many clients behind one NAT
    messages, replies, _ = _frame(gate, burst, NOW)
    assert len(messages) == len(burst)
    assert not replies
    later = NOW + 1.1  # a second later the count starts again
    messages, _, counters = _frame(gate, burst, later)
    assert len(messages) == len(burst)
    assert counters[st.DROP_RATE_LIMITED] == 0
