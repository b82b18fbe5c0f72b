"""The run-time state that lets a restarted crypto process keep what `wg` configured."""

from __future__ import annotations

import ipaddress
import os

from gateway.dataplane.runstate import RunState
from gateway.dataplane.uapi_backend import DeviceBackend
from gateway.keys import generate_private_key, public_key
from gateway.uapi import PeerChange, SetRequest, format_set, parse_set
from gateway.wireguard.device import Device


def _backend() -> DeviceBackend:
    return DeviceBackend(Device(None), listen_port=51820, request_listen_port=lambda _p: None)


def _configured() -> DeviceBackend:
    backend = _backend()
    peers = tuple(
        PeerChange(
            public_key=public_key(generate_private_key()),
            preshared_key=os.urandom(32) if i else None,
            endpoint=(f"fd00::{i + 1}", 51000 + i) if i else None,
            persistent_keepalive_interval=25 if i else None,
            allowed_ips=(
                ipaddress.ip_network(f"10.0.{i}.0/24"),
                ipaddress.ip_network(f"fd01:{i}::/64"),
            ),
        )
        for i in range(3)
    )
    assert backend.apply(SetRequest(private_key=generate_private_key(), peers=peers)) == 0
    return backend


def _comparable(backend: DeviceBackend) -> object:
    snap = backend.get_snapshot()
    peers = sorted(
        (
            p.public_key,
            p.preshared_key,
            str(p.endpoint),
            p.persistent_keepalive_interval,
            sorted(map(str, p.allowed_ips)),
        )
        for p in snap.peers
    )
    return snap.private_key, peers


def test_format_set_recreates_the_device_exactly() -> None:
    original = _configured()
    restored = _backend()
    leftover = PeerChange(public_key=public_key(generate_private_key()))
    assert restored.apply(SetRequest(peers=(leftover,))) == 0  # replace_peers removes it
    assert restored.apply(parse_set(format_set(original.get_snapshot()))) == 0
    assert _comparable(restored) == _comparable(original)


def test_saved_state_round_trips_and_a_torn_write_is_ignored() -> None:
    state = RunState()
    try:
        assert state.load() is None
        text = format_set(_configured().get_snapshot())
        state.save(text)
        assert state.load() == text
        state.save("private_key=" + "00" * 32 + "\n")  # shorter state replaces it whole
        assert state.load() == "private_key=" + "00" * 32 + "\n"
        os.pwrite(state.fd, b"X", 20)  # a crash mid-write: data and header disagree
        assert state.load() is None
    finally:
        state.close()


def test_every_change_through_the_backend_is_reported() -> None:
    changes: list[int] = []
    backend = DeviceBackend(
        Device(None),
        listen_port=1,
        request_listen_port=lambda _p: None,
        on_change=lambda: changes.append(1),
    )
    backend.apply(SetRequest(private_key=generate_private_key()))
    backend.apply(SetRequest(peers=(PeerChange(public_key=public_key(generate_private_key())),)))
    assert len(changes) == 2
