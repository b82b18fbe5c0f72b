"""Sessions kept across a restart (issue 22): a successor Device continues every session it
finds in the table (no new handshake), rejects what its predecessor accepted, and never
sends a (key, counter) pair twice, whatever instant the predecessor died at."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from ipaddress import ip_network
from unittest import mock

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from hypothesis import given, settings
from hypothesis import strategies as hs

from gateway.wireguard import session_crypto as session_crypto_module
from gateway.wireguard import sessions as sessions_module
from gateway.wireguard.constants import REKEY_AFTER_TIME
from gateway.wireguard.device import Device
from gateway.wireguard.drops import Drop
from gateway.wireguard.sessions import COUNTER_BLOCK, HEADER_SIZE, RECORD_SIZE, SessionTable
from testbed.wire import A_ENDPOINT, B_ENDPOINT, Wire, ipv4_packet, make_wire

RECORDS = 16


def _table(wire: Wire) -> bytearray:
    """Give B (the gateway) a session table in a fresh buffer (the memfd's stand-in)."""
    buffer = bytearray(HEADER_SIZE + RECORDS * RECORD_SIZE)
    assert wire.b.restore_sessions(SessionTable(memoryview(buffer)), wire.now) == 0
    return buffer


def _restart(wire: Wire, buffer: bytearray) -> int:
    """B dies (nothing of its memory survives but the table) and a successor comes up."""
    old = wire.b
    key = old.private_key
    assert key is not None
    new = Device(key)
    for peer in old.peers():  # as the config and the saved `wg` state bring them back
        new.upsert_peer(
            peer.public_key, allowed_ips=peer.allowed_ips, endpoint=peer.endpoint, now=wire.now
        )
    wire.b = new
    return new.restore_sessions(SessionTable(memoryview(buffer)), wire.now)


def _established() -> tuple[Wire, bytearray]:
    wire = make_wire()
    buffer = _table(wire)
    assert wire.send_a_to_b() is not None  # A (the client) makes the session
    assert wire.send_b_to_a() is not None
    return wire, buffer


def test_a_successor_continues_the_session_without_a_handshake() -> None:
    wire, buffer = _established()
    initiated = wire.a.counters["handshakes_initiated"]
    assert _restart(wire, buffer) == 1
    wire.advance(0.5)
    assert wire.send_a_to_b(b"after" * 8) is not None  # client-only traffic gets through
    assert wire.send_b_to_a() is not None  # and the replies
    assert wire.a.counters["handshakes_initiated"] == initiated
    assert wire.b.counters["handshakes_completed"] == 0
    (peer,) = wire.b.peers()
    assert peer.last_handshake is not None


def test_what_the_predecessor_accepted_is_a_replay_for_the_successor() -> None:
    wire, buffer = _established()
    sent = wire.a.handle_packet(ipv4_packet("10.0.0.1", "10.0.0.2"), wire.now)
    assert sent is not None
    assert wire.b.handle_datagram(sent[1], A_ENDPOINT, wire.now) is not None
    _restart(wire, buffer)
    assert wire.b.handle_datagram(sent[1], A_ENDPOINT, wire.now) is None
    assert wire.b.drops[Drop.REPLAY] == 1


def test_the_successor_sends_from_past_the_reserved_block() -> None:
    wire, buffer = _established()
    (kp,) = [k for p in wire.b.peers() for k in p.keypairs.all()]
    assert kp.send_counter < COUNTER_BLOCK <= kp.send_limit
    _restart(wire, buffer)
    (kp,) = [k for p in wire.b.peers() for k in p.keypairs.all()]
    assert kp.send_counter == COUNTER_BLOCK  # past anything the predecessor may have used
    assert wire.send_a_to_b() is not None  # the client talks first (B learns its endpoint)
    assert wire.send_b_to_a() is not None  # and its window takes the jump


def test_records_of_gone_peers_are_freed_and_hold_no_key() -> None:
    wire, buffer = _established()
    (kp,) = [k for p in wire.b.peers() for k in p.keypairs.all()]
    assert kp.send_key in buffer
    (peer,) = wire.b.peers()
    wire.b.remove_peer(peer.public_key)
    assert kp.send_key not in buffer
    assert kp.recv_key not in buffer
    assert not any(buffer[HEADER_SIZE:])  # the header keeps only a count


def test_an_expired_or_orphaned_record_is_not_restored() -> None:
    wire, buffer = _established()
    wire.now += 181  # REJECT_AFTER_TIME
    assert _restart(wire, buffer) == 0
    assert not any(buffer[HEADER_SIZE:])  # the header keeps only a count


@contextmanager
def _recording_nonces() -> Iterator[Counter[tuple[bytes, bytes]]]:
    """Every (key, nonce) any keypair encrypts with, counted."""
    seen: Counter[tuple[bytes, bytes]] = Counter()

    class Recording:
        def __init__(self, key: bytes) -> None:
            self._key, self._aead = key, ChaCha20Poly1305(key)

        def encrypt_into(self, nonce: bytes, data: object, aad: object, out: object) -> int:
            seen[self._key, bytes(nonce)] += 1
            return self._aead.encrypt_into(nonce, data, aad, out)  # type: ignore[arg-type]  # delegated as given

        def decrypt_into(self, nonce: bytes, data: object, aad: object, out: object) -> int:
            return self._aead.decrypt_into(nonce, data, aad, out)  # type: ignore[arg-type]  # delegated as given

    with mock.patch.object(session_crypto_module, "ChaCha20Poly1305", Recording):
        yield seen


OPS = hs.lists(
    hs.one_of(
        hs.tuples(hs.just("gateway_sends"), hs.integers(1, 9)),
        hs.tuples(hs.just("client_sends"), hs.integers(1, 9)),
        hs.tuples(hs.just("crash"), hs.just(0)),
        hs.tuples(hs.just("rekey"), hs.just(0)),
    ),
    max_size=30,
)


@settings(max_examples=60, deadline=None)
@given(ops=OPS)
def test_no_key_and_counter_is_ever_sent_twice(ops: list[tuple[str, int]]) -> None:
    with _recording_nonces() as seen, mock.patch.object(sessions_module, "COUNTER_BLOCK", 4):
        wire, buffer = _established()
        for op, count in ops:
            if op == "gateway_sends":
                for _ in range(count):
                    assert wire.send_b_to_a() is not None
            elif op == "client_sends":
                for _ in range(count):
                    assert wire.send_a_to_b() is not None
            elif op == "crash":
                _restart(wire, buffer)
            else:  # time passes with the timers running: sessions rekey, counters from 0
                assert wire.send_a_to_b() is not None
                for _ in range(int(REKEY_AFTER_TIME) * 2 + 2):
                    wire.advance(0.5)
                    wire.pump()
                assert wire.send_a_to_b() is not None
        assert seen
        assert max(seen.values()) == 1, [n for n in seen.items() if n[1] > 1][:3]


def test_a_transport_message_for_a_lost_session_starts_a_handshake_at_once() -> None:
    # The second line (issue 22): a session that could not be kept costs one round trip.
    wire = make_wire()
    assert wire.send_a_to_b() is not None
    key = wire.b.private_key
    assert key is not None
    (peer,) = wire.b.peers()
    successor = Device(key)  # no session table: every session is lost
    successor.upsert_peer(
        peer.public_key,
        allowed_ips=[ip_network("10.0.0.1/32")],
        endpoint=A_ENDPOINT,  # known from the config (or `wg`)
        now=wire.now,
    )
    wire.b = successor
    sent = wire.a.handle_packet(ipv4_packet("10.0.0.1", "10.0.0.2"), wire.now)
    assert sent is not None
    assert successor.handle_datagram(sent[1], A_ENDPOINT, wire.now) is None  # unknown index
    out = successor.take_transmits()
    assert [(dst, d[0]) for dst, d in out] == [(A_ENDPOINT, 1)]  # an initiation, at once
    for dst, data in out:
        assert dst == A_ENDPOINT
        wire.a.handle_datagram(data, B_ENDPOINT, wire.now)
    wire.pump()
    assert wire.send_a_to_b() is not None  # one round trip later, traffic flows
    # Rate-limited: more unknown-index messages from there do not start more handshakes.
    for _ in range(10):
        successor.handle_datagram(sent[1], A_ENDPOINT, wire.now)
    assert not [d for _, d in successor.take_transmits() if d[0] == 1]
    # And not from an address that is no peer's endpoint.
    stranger = ("198.51.100.9", 4000)
    successor.handle_datagram(b"\x04\x00\x00\x00" + bytes(44), stranger, wire.now + 10)
    assert not successor.take_transmits()
