"""Two Devices over an in-memory wire with a fake clock: every protocol transition."""

from __future__ import annotations

import os
from ipaddress import ip_network

from gateway.wireguard.constants import (
    KEEPALIVE_TIMEOUT,
    REJECT_AFTER_TIME,
    REKEY_AFTER_MESSAGES,
    REKEY_AFTER_TIME,
    REKEY_TIMEOUT,
    ZERO_KEYS_AFTER,
)
from gateway.wireguard.crypto import public_key
from gateway.wireguard.device import Device
from gateway.wireguard.drops import Drop
from gateway.wireguard.peer import Peer
from testbed.wire import (
    A_ENDPOINT,
    A_INNER,
    B_ENDPOINT,
    B_INNER,
    Wire,
    ipv4_packet,
    ipv6_packet,
    make_wire,
)


def peer_of(device: Device) -> Peer:
    (peer,) = device.peers()
    return peer


def established(**kwargs: object) -> Wire:
    wire = make_wire(**kwargs)  # type: ignore[arg-type]  # test options
    assert wire.send_a_to_b() is not None
    return wire


def run_for(wire: Wire, seconds: float, step: float = 0.5) -> None:
    end = wire.now + seconds
    while wire.now < end:
        wire.advance(step)
        wire.pump()


def test_handshake_initiated_by_a_and_transport_both_ways() -> None:
    wire = make_wire()
    packet = ipv4_packet(A_INNER, B_INNER, b"hello" * 10)
    assert wire.a.handle_packet(packet, wire.now) is None  # staged until the handshake ends
    wire.pump()
    assert wire.delivered_to_b == [packet]
    assert wire.a.counters["handshakes_completed"] == 1
    assert wire.b.counters["handshakes_completed"] == 1  # confirmed by A's first data
    assert wire.send_b_to_a(b"back") is not None
    a_peer, b_peer = peer_of(wire.a), peer_of(wire.b)
    assert a_peer.last_handshake == wire.now
    assert b_peer.endpoint == A_ENDPOINT  # learned from the authenticated initiation
    assert a_peer.tx_packets >= 1
    assert b_peer.rx_packets >= 1
    assert not wire.a.drops
    assert not wire.b.drops


def test_handshake_initiated_by_b() -> None:
    wire = make_wire(b_knows_a_endpoint=True)
    assert wire.send_b_to_a() is not None
    assert wire.b.counters["handshakes_initiated"] == 1
    assert wire.a.counters["handshakes_initiated"] == 0


def test_psk_both_sides_and_mismatch() -> None:
    psk = os.urandom(32)
    assert established(psk=psk).send_b_to_a() is not None
    wire = make_wire(psk=psk)
    peer_of(wire.b).preshared_key = os.urandom(32)
    assert wire.send_a_to_b() is None
    assert wire.a.drops[Drop.HANDSHAKE_FAILED] == 1  # the response does not authenticate
    assert peer_of(wire.a).keypairs.current is None


def test_ipv6_inner_packets() -> None:
    wire = established()
    packet = ipv6_packet("fd00::1", "fd00::2", b"six" * 7)
    out = wire.a.handle_packet(packet, wire.now)
    assert out is not None
    assert len(out[1]) % 16 == 0
    assert wire.b.handle_datagram(out[1], A_ENDPOINT, wire.now) == packet


def test_responder_waits_for_confirmation_before_sending() -> None:
    wire = make_wire()
    wire.a.handle_packet(ipv4_packet(A_INNER, B_INNER), wire.now)
    (initiation,) = wire.a.take_transmits()
    wire.b.handle_datagram(initiation[1], A_ENDPOINT, wire.now)
    b_peer = peer_of(wire.b)
    assert b_peer.keypairs.next is not None
    assert b_peer.keypairs.current is None
    assert wire.b.handle_packet(ipv4_packet(B_INNER, A_INNER), wire.now) is None  # staged
    assert len(b_peer.staged) == 1
    wire.b.take_transmits()  # the response is lost; A retransmits later


def test_simultaneous_initiation_converges() -> None:
    wire = make_wire(b_knows_a_endpoint=True)
    assert wire.a.handle_packet(ipv4_packet(A_INNER, B_INNER), wire.now) is None
    assert wire.b.handle_packet(ipv4_packet(B_INNER, A_INNER), wire.now) is None
    wire.pump()  # each side answers the other's initiation, dropping its own: no session yet
    assert not wire.delivered_to_a
    assert not wire.delivered_to_b
    # Retransmits are jittered apart, so the next round completes (fine steps keep them apart).
    run_for(wire, 2 * REKEY_TIMEOUT, step=0.01)
    assert wire.delivered_to_a
    assert wire.delivered_to_b
    assert wire.send_a_to_b() is not None
    assert wire.send_b_to_a() is not None


def test_retransmit_with_jitter_then_give_up_and_zero_keys() -> None:
    wire = make_wire()
    wire.lost = True
    wire.a.handle_packet(ipv4_packet(A_INNER, B_INNER), wire.now)
    wire.pump()
    start = wire.now
    deadline = wire.a.next_deadline()
    assert deadline is not None
    assert start + REKEY_TIMEOUT <= deadline <= start + REKEY_TIMEOUT + 0.334
    run_for(wire, REKEY_TIMEOUT + 0.4, step=0.1)
    assert wire.a.counters["handshakes_initiated"] == 2
    run_for(wire, 120, step=1)
    assert wire.a.counters["handshakes_gave_up"] == 1
    initiated = wire.a.counters["handshakes_initiated"]
    assert initiated == 20  # the first one plus 19 retries, as wireguard-go
    assert wire.a.drops[Drop.HANDSHAKE_GAVE_UP] == 1  # the staged packet is flushed
    assert not peer_of(wire.a).staged
    run_for(wire, ZERO_KEYS_AFTER, step=10)
    assert wire.a.counters["handshakes_initiated"] == initiated  # no more tries on its own
    assert wire.a.counters["keys_zeroed"] == 1


def test_keepalive_after_receiving_data() -> None:
    wire = established()
    assert wire.b.next_deadline() == wire.now + KEEPALIVE_TIMEOUT
    sent = wire.b.counters["keepalives_sent"]
    run_for(wire, KEEPALIVE_TIMEOUT + 1)
    assert wire.b.counters["keepalives_sent"] == sent + 1
    assert wire.a.counters["keepalives_received"] >= 1


def test_new_handshake_when_sent_data_gets_no_answer() -> None:
    wire = established()
    wire.lost = True
    wire.a.handle_packet(ipv4_packet(A_INNER, B_INNER), wire.now)
    run_for(wire, KEEPALIVE_TIMEOUT + REKEY_TIMEOUT + 0.5, step=0.25)
    assert wire.a.counters["handshakes_initiated"] == 2


def test_persistent_keepalive() -> None:
    wire = established()
    wire.a.upsert_peer(peer_of(wire.a).public_key, persistent_keepalive=25, now=wire.now)
    wire.pump()
    before = wire.a.counters["keepalives_sent"]
    assert before >= 1  # enabling it sends one right away
    run_for(wire, 60, step=1)
    assert wire.a.counters["keepalives_sent"] >= before + 2
    assert wire.a.counters["handshakes_initiated"] == 1


def test_rekey_after_time() -> None:
    wire = established()
    old = peer_of(wire.a).keypairs.current
    wire.now += REKEY_AFTER_TIME + 1
    assert wire.send_a_to_b() is not None
    assert wire.a.counters["handshakes_initiated"] == 2
    assert peer_of(wire.a).keypairs.current is not old
    assert peer_of(wire.a).keypairs.previous is old
    assert wire.send_b_to_a() is not None


def test_rekey_after_messages() -> None:
    wire = established()
    kp = peer_of(wire.a).keypairs.current
    assert kp is not None
    kp.send_counter = REKEY_AFTER_MESSAGES
    wire.now += REKEY_TIMEOUT  # initiations are rate limited to one per REKEY_TIMEOUT
    wire.a.handle_packet(ipv4_packet(A_INNER, B_INNER), wire.now)
    assert wire.a.counters["handshakes_initiated"] == 2


def test_reject_after_time_both_directions() -> None:
    wire = established()
    late = wire.a.handle_packet(ipv4_packet(A_INNER, B_INNER), wire.now)
    assert late is not None
    wire.now += REJECT_AFTER_TIME + 1
    assert wire.b.handle_datagram(late[1], A_ENDPOINT, wire.now) is None
    assert wire.b.drops[Drop.EXPIRED_KEYPAIR] == 1
    wire.lost = True
    assert wire.a.handle_packet(ipv4_packet(A_INNER, B_INNER), wire.now) is None  # staged
    assert len(peer_of(wire.a).staged) == 1


def test_cookie_reply_under_load_then_mac2_accepted() -> None:
    wire = make_wire(under_load_threshold=0)
    wire.a.under_load_threshold = 1000  # only B is under load
    wire.a.handle_packet(ipv4_packet(A_INNER, B_INNER), wire.now)
    wire.pump()
    assert wire.b.drops[Drop.UNDER_LOAD_COOKIE] == 1
    assert wire.b.counters["cookie_replies_sent"] == 1
    assert wire.a.counters["cookie_replies_received"] == 1
    assert not wire.delivered_to_b
    run_for(wire, REKEY_TIMEOUT + 0.5, step=0.25)  # the retransmit carries a valid mac2
    assert wire.b.drops[Drop.UNDER_LOAD_COOKIE] == 1
    assert len(wire.delivered_to_b) == 1


def test_rate_limit_under_load() -> None:
    wire = make_wire(under_load_threshold=0)
    wire.a.handle_packet(ipv4_packet(A_INNER, B_INNER), wire.now)
    wire.pump()  # A now holds B's cookie
    initiation = wire.a.take_transmits() or []
    peer = peer_of(wire.a)
    wire.a.tick(wire.now)
    msg = bytearray(148)
    # Build fresh initiations with mac2 from A's state and replay one of them many times.
    hs_msg = peer.handshake.create_initiation(
        wire.a._identity,
        1234,
        os.urandom(32),
        bytes(12),  # type: ignore[arg-type]  # set
    )
    peer.cookies.add_macs(hs_msg, 116, wire.now)
    msg[:] = hs_msg
    del initiation
    for _ in range(20):
        wire.b.handle_datagram(bytes(msg), A_ENDPOINT, wire.now)
    assert wire.b.drops[Drop.RATE_LIMITED] >= 10
    assert wire.b.drops[Drop.UNDER_LOAD_COOKIE] == 1  # mac2 was valid every time


def test_roaming_follows_latest_authenticated_source() -> None:
    wire = established()
    out = wire.a.handle_packet(ipv4_packet(A_INNER, B_INNER), wire.now)
    assert out is not None
    new_home = ("198.51.100.7", 40000)
    assert wire.b.handle_datagram(out[1], new_home, wire.now) is not None
    assert peer_of(wire.b).endpoint == new_home
    reply = wire.b.handle_packet(ipv4_packet(B_INNER, A_INNER), wire.now)
    assert reply is not None
    assert reply[0] == new_home
    forged = bytearray(out[1])
    forged[-1] ^= 1
    wire.b.handle_datagram(forged, ("203.0.113.9", 1), wire.now)
    assert peer_of(wire.b).endpoint == new_home  # unauthenticated packets never move it


def test_replay_and_unknown_index_and_bad_tag() -> None:
    wire = established()
    out = wire.a.handle_packet(ipv4_packet(A_INNER, B_INNER), wire.now)
    assert out is not None
    assert wire.b.handle_datagram(out[1], A_ENDPOINT, wire.now) is not None
    assert wire.b.handle_datagram(out[1], A_ENDPOINT, wire.now) is None
    assert wire.b.drops[Drop.REPLAY] == 1
    unknown = bytearray(out[1])
    unknown[4:8] = (int.from_bytes(unknown[4:8], "little") ^ 1).to_bytes(4, "little")
    assert wire.b.handle_datagram(unknown, A_ENDPOINT, wire.now) is None
    assert wire.b.drops[Drop.UNKNOWN_INDEX] == 1
    tampered = bytearray(out[1])
    tampered[20] ^= 0x80
    assert wire.b.handle_datagram(tampered, A_ENDPOINT, wire.now) is None
    assert wire.b.drops[Drop.DECRYPT_FAILED] == 1


def test_spoofed_inner_source_is_dropped() -> None:
    wire = established()
    out = wire.a.handle_packet(ipv4_packet("10.0.0.9", B_INNER), wire.now)
    assert out is not None
    assert wire.b.handle_datagram(out[1], A_ENDPOINT, wire.now) is None
    assert wire.b.drops[Drop.SPOOFED_SOURCE] == 1


def test_replayed_initiation_is_rejected() -> None:
    wire = make_wire()
    wire.a.handle_packet(ipv4_packet(A_INNER, B_INNER), wire.now)
    (initiation,) = wire.a.take_transmits()
    wire.b.handle_datagram(initiation[1], A_ENDPOINT, wire.now)
    wire.b.handle_datagram(initiation[1], A_ENDPOINT, wire.now + 1)
    assert wire.b.drops[Drop.REPLAYED_TIMESTAMP] == 1
    assert wire.b.counters["handshake_responses_sent"] == 1


def test_handshake_flood_guard() -> None:
    wire = make_wire()
    a_peer = peer_of(wire.a)
    first = a_peer.handshake.create_initiation(
        wire.a._identity,
        1,
        os.urandom(32),
        bytes(11) + b"\x01",  # type: ignore[arg-type]  # set
    )
    a_peer.cookies.add_macs(first, 116, wire.now)
    second = a_peer.handshake.create_initiation(
        wire.a._identity,
        2,
        os.urandom(32),
        bytes(11) + b"\x02",  # type: ignore[arg-type]  # set
    )
    a_peer.cookies.add_macs(second, 116, wire.now)
    wire.b.handle_datagram(bytes(first), A_ENDPOINT, wire.now)
    wire.b.handle_datagram(bytes(second), A_ENDPOINT, wire.now + 0.010)
    assert wire.b.drops[Drop.HANDSHAKE_FLOOD] == 1
    wire.b.handle_datagram(bytes(second), A_ENDPOINT, wire.now + 0.025)
    assert wire.b.counters["handshake_responses_sent"] == 2


def test_runtime_peer_changes_leave_other_sessions_alone() -> None:
    wire = established()
    a_peer = peer_of(wire.a)
    session = a_peer.keypairs.current
    other = public_key(os.urandom(32))
    wire.a.upsert_peer(other, allowed_ips=[ip_network("10.0.1.0/24")], now=wire.now)
    assert wire.a.peer(other) is not None
    assert wire.send_a_to_b() is not None
    assert a_peer.keypairs.current is session
    # Moving a prefix from B to the new peer re-routes it.
    wire.a.upsert_peer(other, allowed_ips=[ip_network("10.0.0.2/32")], now=wire.now)
    assert ip_network("10.0.0.2/32") not in a_peer.allowed_ips
    assert wire.a.handle_packet(ipv4_packet(A_INNER, B_INNER), wire.now) is None
    assert wire.a.remove_peer(other)
    assert not wire.a.remove_peer(other)
    assert wire.a.handle_packet(ipv4_packet(A_INNER, B_INNER), wire.now) is None
    assert wire.a.drops[Drop.NO_PEER_FOR_DESTINATION] == 1
    wire.a.upsert_peer(
        a_peer.public_key, allowed_ips=[ip_network("10.0.0.0/24")], replace_allowed_ips=True,
        now=wire.now,
    )  # fmt: skip
    assert a_peer.allowed_ips == [ip_network("10.0.0.0/24")]
    assert wire.send_a_to_b() is not None
    assert a_peer.keypairs.current is session
    # B removes A: A's datagrams now hit an unknown index.
    assert wire.b.remove_peer(peer_of(wire.b).public_key)
    out = wire.a.handle_packet(ipv4_packet(A_INNER, B_INNER), wire.now)
    assert out is not None
    assert wire.b.handle_datagram(out[1], A_ENDPOINT, wire.now) is None
    assert wire.b.drops[Drop.UNKNOWN_INDEX] == 1


def test_staging_is_bounded() -> None:
    wire = make_wire(max_staged_per_peer=4)
    wire.lost = True
    for _ in range(10):
        wire.a.handle_packet(ipv4_packet(A_INNER, B_INNER), wire.now)
    assert len(peer_of(wire.a).staged) == 4
    assert wire.a.drops[Drop.STAGED_OVERFLOW] == 6


def test_private_key_change_ends_sessions() -> None:
    wire = established()
    wire.b.set_private_key(os.urandom(32))
    assert peer_of(wire.b).keypairs.current is None
    assert wire.b.public_key is not None
    assert peer_of(wire.a).endpoint == B_ENDPOINT


def test_keys_zeroed_after_three_reject_times_without_a_new_session() -> None:
    wire = established()
    wire.lost = True
    run_for(wire, ZERO_KEYS_AFTER - 5, step=5)
    assert peer_of(wire.b).keypairs.current is not None
    run_for(wire, 10, step=5)
    for device in (wire.a, wire.b):
        assert device.counters["keys_zeroed"] == 1
        assert not peer_of(device).keypairs.all()
    assert wire.b.next_deadline() is None  # idle means idle


def test_malformed_outbound_and_inner_packets_are_counted() -> None:
    wire = established()
    assert wire.a.handle_packet(b"\x45" * 10, wire.now) is None
    assert wire.a.handle_packet(b"\x60" + bytes(30), wire.now) is None
    assert wire.a.handle_packet(b"\x00" * 40, wire.now) is None
    assert wire.a.drops[Drop.MALFORMED_PACKET] == 3
    bogus = bytearray(ipv4_packet(A_INNER, B_INNER))
    bogus[2:4] = (4000).to_bytes(2, "big")  # total length beyond the datagram
    out = wire.a.handle_packet(bytes(bogus), wire.now)
    assert out is not None
    assert wire.b.handle_datagram(out[1], A_ENDPOINT, wire.now) is None
    assert wire.b.drops[Drop.MALFORMED_INNER] == 1
    assert wire.b.handle_datagram(b"\x04\x00\x00\x00" + bytes(20), A_ENDPOINT, wire.now) is None
    assert wire.b.handle_datagram(b"\x05\x00\x00\x00" + bytes(60), A_ENDPOINT, wire.now) is None
    assert wire.b.handle_datagram(b"\x01\x00\x00\x00" + bytes(60), A_ENDPOINT, wire.now) is None
    assert wire.b.handle_datagram(b"\x01\x00", A_ENDPOINT, wire.now) is None
    assert wire.b.drops[Drop.MALFORMED] == 4
    assert wire.b.handle_datagram(b"\x01\x00\x00\x00" + bytes(144), A_ENDPOINT, wire.now) is None
    assert wire.b.drops[Drop.BAD_MAC1] == 1
