"""A standby takes the active's sessions over (issue 23): the client goes on without a
handshake, the standby's send counters start past the active's reservations, and what the
active's tick streams reaches the standby through the real channel (sealed and opened)."""

from __future__ import annotations

import nacl.public

from gateway.ha.channel import Channel
from gateway.ha.codec import Batch
from gateway.ha.mirror import TAKEOVER_JUMP
from gateway.ha.node import ACTIVE, STANDBY, HaNode
from gateway.wireguard.device import Device
from gateway.wireguard.sessions import HEADER_SIZE, RECORD_SIZE, SessionTable
from testbed.wire import A_ENDPOINT, Wire, make_wire

RECORDS = 16
KEY_A, KEY_B = nacl.public.PrivateKey.generate(), nacl.public.PrivateKey.generate()


def _gateway_twin(wire: Wire) -> Device:
    """The standby: the same WireGuard key and peers as the active (B), its own table."""
    key = wire.b.private_key
    assert key is not None
    twin = Device(key)
    for peer in wire.b.peers():
        twin.upsert_peer(peer.public_key, allowed_ips=peer.allowed_ips, now=wire.now)
    table = SessionTable(memoryview(bytearray(HEADER_SIZE + RECORDS * RECORD_SIZE)))
    assert twin.restore_sessions(table, wire.now) == 0
    return twin


def _replicate(active: HaNode, standby: HaNode, now: float) -> None:
    """One tick of the active, through a connection's two channels, into the standby."""
    sender, receiver = Channel(KEY_A, KEY_B.public_key), Channel(KEY_B, KEY_A.public_key)
    sender.receive(receiver.hello())
    receiver.receive(sender.hello())
    standby.begin_resync()
    active.resync(now)
    batch = active.tick(now, 5000.0)
    assert batch is not None
    (got,) = receiver.receive(sender.seal(batch))
    standby.receive(got, now, 5000.1)


def _pair() -> tuple[Wire, HaNode, HaNode, Device]:
    wire = make_wire()
    table = SessionTable(memoryview(bytearray(HEADER_SIZE + RECORDS * RECORD_SIZE)))
    wire.b.restore_sessions(table, wire.now)
    assert wire.send_a_to_b() is not None  # the client makes the session
    assert wire.send_b_to_a() is not None
    twin = _gateway_twin(wire)
    active = HaNode(wire.b, lambda: wire.b.sessions, role=ACTIVE, rate=1 << 20)
    standby = HaNode(twin, lambda: twin.sessions, role=STANDBY, rate=1 << 20)
    active.keep_timestamps(wire.b.take_timestamps() or {})
    _replicate(active, standby, wire.now)
    return wire, active, standby, twin


def test_the_standby_continues_the_session_without_a_handshake() -> None:
    wire, _, standby, twin = _pair()
    initiated = wire.a.counters["handshakes_initiated"]
    assert len(standby.mirror.sessions()) == 1
    assert standby.mirror.endpoints()[0].port == A_ENDPOINT[1]
    assert standby.status.lag > 0 and standby.status.last_sync == 5000.1
    wire.b = twin  # the active dies; keepalived moves the address
    standby.set_role(ACTIVE, wire.now)
    assert standby.status.takeovers == 1
    wire.advance(0.5)
    assert wire.send_b_to_a() is not None  # the endpoint came along: it can send first
    assert wire.send_a_to_b(b"after" * 8) is not None
    assert wire.a.counters["handshakes_initiated"] == initiated
    assert twin.counters["handshakes_completed"] == 0


def test_takeover_counters_are_disjoint_from_the_active_s() -> None:
    wire, _, standby, twin = _pair()
    (old,) = [k for p in wire.b.peers() for k in p.keypairs.all()]
    limit = old.send_limit
    standby.set_role(ACTIVE, wire.now)
    (new,) = [k for p in twin.peers() for k in p.keypairs.all()]
    assert new.send_counter == limit + TAKEOVER_JUMP
    # Split brain: the old active keeps sending, below where the taker starts.
    active = wire.b
    for _ in range(3):
        assert wire.send_b_to_a() is not None
    assert old.send_counter < new.send_counter
    wire.b = twin
    assert wire.send_b_to_a() is not None  # the client's window takes the jump
    del active


def test_a_session_ended_on_the_active_is_gone_on_the_standby() -> None:
    wire, active, standby, _ = _pair()
    wire.b.remove_peer(next(iter(wire.b.peers())).public_key)
    batch = active.tick(wire.now + 1, 5001.0)
    assert isinstance(batch, Batch)
    standby.receive(batch, wire.now + 1, 5001.0)
    assert standby.mirror.sessions() == []


def test_nothing_changed_sends_nothing() -> None:
    wire, active, _, _ = _pair()
    assert active.tick(wire.now + 0.1, 5000.2) is None
