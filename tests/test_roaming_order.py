"""Roaming follows the peer's latest source by arrival, even though the crypto loop handles
transport before the handshake messages it queued (transport-first).

The listen-port change of wireguard-go's netns.sh roaming check (`wg set wg1 listen-port
9999`, then a ping, then `wg show wg2 endpoints`): an initiation the peer sent from its old
port just before, arriving in the same batch as the first data packet from the new port,
was handled after that packet and moved the endpoint back to the old port."""

from __future__ import annotations

from gateway.wireguard.constants import MESSAGE_INITIATION, MESSAGE_TRANSPORT, REKEY_AFTER_TIME
from testbed.wire import A_ENDPOINT, A_INNER, B_INNER, ipv4_packet
from tests.dataplane_fakes import LoopGateway, established

START = 1000.0
OLD = A_ENDPOINT
NEW = (A_ENDPOINT[0], 9999)  # the client's new listen port


def established_pair() -> tuple[LoopGateway, LoopGateway, bytes]:
    """A client (A, the session's initiator), the gateway (B), A's public key."""
    a, b = established(START)
    assert a.device.public_key is not None
    return a, b, a.device.public_key


def sent_by_a(a: LoopGateway, now: float) -> dict[int, bytes]:
    """A's datagrams after one packet at `now`, by message type."""
    a.rings.from_workers[0].send(ipv4_packet(A_INNER, B_INNER, b"ping"))
    a.run(now)
    return {datagram[0]: datagram for _, datagram in a.udp_out()}


def test_a_queued_handshake_from_the_old_port_does_not_undo_the_new_one() -> None:
    a, b, key_a = established_pair()
    # The session is old enough for A to rekey: one packet makes data and an initiation.
    now = START + REKEY_AFTER_TIME + 1
    before_move = sent_by_a(a, now)
    assert set(before_move) == {MESSAGE_TRANSPORT, MESSAGE_INITIATION}
    after_move = sent_by_a(a, now + 0.01)  # the ping, from the new port
    # The initiation from the old port and the ping from the new one reach B together.
    assert b.udp_in([before_move[MESSAGE_INITIATION]], OLD) == 1
    assert b.udp_in([after_move[MESSAGE_TRANSPORT]], NEW) == 1
    b.run(now + 0.02)
    peer = b.device.peer(key_a)
    assert peer is not None
    assert peer.endpoint == NEW
    assert [d for d, _ in b.udp_out()] == [OLD]  # the response still goes where it was asked


def test_a_handshake_that_arrived_later_still_roams() -> None:
    a, b, key_a = established_pair()
    now = START + REKEY_AFTER_TIME + 1
    sent = sent_by_a(a, now)
    assert b.udp_in([sent[MESSAGE_TRANSPORT]], OLD) == 1
    b.run(now)
    assert b.udp_in([sent[MESSAGE_INITIATION]], NEW) == 1  # a later batch, from elsewhere
    b.run(now + 0.01)
    peer = b.device.peer(key_a)
    assert peer is not None
    assert peer.endpoint == NEW
