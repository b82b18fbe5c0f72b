"""Adding peers costs no Diffie-Hellman: the static-static secret is computed on first use."""

from __future__ import annotations

import os

import pytest

from gateway.wireguard import noise
from gateway.wireguard.crypto import public_key
from gateway.wireguard.device import Device
from testbed.wire import make_wire


def test_adding_peers_runs_no_dh_until_a_handshake_needs_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[bytes] = []
    real_dh = noise.dh

    def counting_dh(private_key: bytes, public: bytes) -> bytes:
        calls.append(public)
        return real_dh(private_key, public)

    monkeypatch.setattr(noise, "dh", counting_dh)
    device = Device(os.urandom(32))
    peers = [public_key(os.urandom(32)) for _ in range(1000)]
    for key in peers:
        device.upsert_peer(key, now=1000.0)
    device.set_private_key(os.urandom(32))  # a new key: still nothing computed
    assert calls == []
    peer = device.peer(peers[7])
    assert peer is not None
    assert peer.handshake.static_static is not None
    assert peer.handshake.static_static is not None  # computed once, then kept
    assert calls == [peers[7]]


def test_a_low_order_peer_key_disables_handshakes_with_that_peer_only() -> None:
    wire = make_wire()
    wire.a.upsert_peer(bytes(32), now=wire.now)  # the all-zero point: low order
    bad = wire.a.peer(bytes(32))
    assert bad is not None
    assert bad.handshake.static_static is None
    assert wire.send_a_to_b() is not None  # the good peer still handshakes
