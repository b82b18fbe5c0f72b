"""A restarted crypto process: the saved run-time state comes back entry by entry (a poisoned
entry costs only itself, never a crash loop) and so do the peers' handshake timestamps (a
captured initiation cannot be replayed after a restart).

Each test builds the crypto process's control part (CryptoControl) the way crypto_main does,
"restarts" it by building a second one on the same RunState, and drives its Device through
the crypto loop on in-memory rings against a client Device.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.config import load_config
from gateway.dataplane.cryptomain import CryptoControl
from gateway.dataplane.runstate import RunState
from gateway.keys import encode_key, generate_private_key, public_key
from gateway.telemetry import stats as st
from gateway.uapi import ERR_INVALID, PeerChange, SetRequest
from gateway.wireguard.device import Device
from gateway.wireguard.drops import Drop
from testbed.wire import A_ENDPOINT, A_INNER, B_ENDPOINT, B_INNER, ipv4_packet
from tests.dataplane_fakes import KeyBoard, LoopGateway, run_until_quiet

START = 1000.0
ATTACKER = ("198.51.100.66", 40000)


class Crash(BaseException):
    """A process death in the middle of the restore (a segfault, a kill)."""


@pytest.fixture
def runstate() -> Iterator[RunState]:
    state = RunState()
    yield state
    state.close()


@pytest.fixture
def crypto_end(control_sockets: tuple[socket.socket, socket.socket]) -> socket.socket:
    return control_sockets[1]


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """A gateway with no peers in its config file (they come from `wg`, i.e. the state)."""
    (tmp_path / "private.key").write_text(encode_key(generate_private_key()) + "\n")
    (tmp_path / "private.key").chmod(0o600)
    path = tmp_path / "gateway.toml"
    path.write_text('[interface]\nname = "fzr0"\nprivate_key_file = "private.key"\n')
    return path


def _start(path: Path, crypto_end: socket.socket, runstate: RunState) -> CryptoControl:
    """A crypto process coming up: built from the config, then the saved state restored."""
    crypto = CryptoControl(
        load_config(path),
        control_socket=crypto_end,
        runstate=runstate,
        listen_port=51820,
        key_board=KeyBoard(),
        now=START,
    )
    crypto.restore_state(START)
    return crypto


def _client(gateway: CryptoControl, key: bytes, now: float = START) -> LoopGateway:
    """A client (A) of the gateway, routing B_INNER to it."""
    device = Device(key)
    gateway_key = gateway.device.public_key
    assert gateway_key is not None
    known = gateway.device.peer(public_key(key))
    device.upsert_peer(
        gateway_key,
        preshared_key=None if known is None else known.preshared_key,
        endpoint=B_ENDPOINT,
        allowed_ips=[ipaddress.ip_network(f"{B_INNER}/32")],
        now=now,
    )
    return LoopGateway(device, A_ENDPOINT)


def _gateway(crypto: CryptoControl) -> LoopGateway:
    return LoopGateway(crypto.device, B_ENDPOINT, keep_timestamps=crypto.keep_timestamps)


def _wg_peers(crypto: CryptoControl, count: int) -> list[bytes]:
    """`wg set` adds `count` peers (10.7.0.i/32, a preshared key each); their private keys."""
    keys = [generate_private_key() for _ in range(count)]
    changes = tuple(
        PeerChange(
            public_key=public_key(key),
            preshared_key=os.urandom(32),
            allowed_ips=(ipaddress.ip_network(f"10.7.0.{i + 1}/32"),),
        )
        for i, key in enumerate(keys)
    )
    assert crypto.backend.apply(SetRequest(peers=changes)) == 0
    return keys


def _poison(runstate: RunState, peer: bytes, line: str) -> None:
    """Insert `line` into the saved state's section of `peer`."""
    saved = runstate.load()
    assert saved is not None
    marker = f"public_key={peer.hex()}\n"
    assert marker in saved
    runstate.save(saved.replace(marker, marker + line + "\n"))


def _works(gateway: CryptoControl, client_key: bytes, inner: str) -> bool:
    """A handshake and one packet from the client through the gateway's crypto loop."""
    client, loop = _client(gateway, client_key), _gateway(gateway)
    packet = ipv4_packet(inner, B_INNER)
    assert client.rings.from_workers[0].send(packet)
    run_until_quiet(client, loop, START)
    return [p for w in loop.tun_out() for p in w] == [packet]


def _secrets(crypto: CryptoControl) -> list[str]:
    """Every key value the gateway holds, as the state writes them (hex) and as base64."""
    values = [crypto.device.private_key or b""]
    values += [p.preshared_key or b"" for p in crypto.device.peers()]
    return [text for v in values if v for text in (v.hex(), encode_key(v))]


def test_a_saved_peer_that_fails_is_left_out_and_the_others_come_back(
    config: Path,
    crypto_end: socket.socket,
    runstate: RunState,
    caplog: pytest.LogCaptureFixture,
) -> None:
    first = _start(config, crypto_end, runstate)
    keys = _wg_peers(first, 3)
    bad = public_key(keys[1])
    _poison(runstate, bad, "endpoint=localhost:51820")  # a name: not something to frame
    with caplog.at_level(logging.ERROR):
        second = _start(config, crypto_end, runstate)
    restored = {p.public_key for p in second.device.peers()}
    assert restored == {public_key(keys[0]), public_key(keys[2])}
    assert f"peer {encode_key(bad)}" in caplog.text
    assert "'endpoint' line" in caplog.text
    for secret in _secrets(first):
        assert secret not in caplog.text
    assert _works(second, keys[0], "10.7.0.1")
    assert _works(second, keys[2], "10.7.0.3")
    saved = runstate.load()  # saved again as restored: the bad entry is not tried again
    assert saved is not None
    assert bad.hex() not in saved
    assert public_key(keys[2]).hex() in saved


def test_a_scoped_ipv6_endpoint_is_refused_rather_than_crashing_the_loop(
    config: Path,
    crypto_end: socket.socket,
    runstate: RunState,
    caplog: pytest.LogCaptureFixture,
) -> None:
    first = _start(config, crypto_end, runstate)
    keys = _wg_peers(first, 2)
    scoped = ("fe80::1%eth0", 51820)
    change = PeerChange(public_key(keys[1]), endpoint=scoped, persistent_keepalive_interval=25)
    assert first.backend.apply(SetRequest(peers=(change,))) == ERR_INVALID  # `wg set`
    # A state saved by a gateway that accepted it: the keepalive would go out at once.
    _poison(runstate, public_key(keys[1]), "endpoint=[fe80::1%eth0]:51820")
    _poison(runstate, public_key(keys[1]), "persistent_keepalive_interval=25")
    with caplog.at_level(logging.ERROR):
        second = _start(config, crypto_end, runstate)
    assert {p.public_key for p in second.device.peers()} == {public_key(keys[0])}
    assert f"peer {encode_key(public_key(keys[1]))}" in caplog.text
    _gateway(second).run(START)  # nothing unframable to send
    assert _works(second, keys[0], "10.7.0.1")


def test_an_entry_whose_restore_kills_the_process_is_dropped_by_the_next_one(
    config: Path,
    crypto_end: socket.socket,
    runstate: RunState,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first = _start(config, crypto_end, runstate)
    keys = _wg_peers(first, 3)
    deadly = public_key(keys[1])
    upsert = Device.upsert_peer

    def crash_on_deadly(self: Device, key: bytes, **settings: Any) -> object:
        if key == deadly:
            raise Crash
        return upsert(self, key, **settings)

    monkeypatch.setattr(Device, "upsert_peer", crash_on_deadly)
    with pytest.raises(Crash):
        _start(config, crypto_end, runstate)  # dies in the restore, as it would every time
    with caplog.at_level(logging.ERROR):
        second = _start(config, crypto_end, runstate)  # the next one comes up
    assert {p.public_key for p in second.device.peers()} == {
        public_key(keys[0]),
        public_key(keys[2]),
    }
    assert f"peer {encode_key(deadly)}" in caplog.text
    assert "ended the previous crypto process" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        third = _start(config, crypto_end, runstate)
    assert caplog.text == ""  # left out for good
    assert len(list(third.device.peers())) == 2
    assert _works(third, keys[2], "10.7.0.3")


def _initiation(gateway: CryptoControl, client_key: bytes, now: float) -> bytes:
    """The handshake initiation a client (restarted at `now`) sends with its first packet."""
    client = _client(gateway, client_key, now)
    client.rings.from_workers[0].send(ipv4_packet(A_INNER, B_INNER))
    client.run(now)
    ((dst, datagram),) = client.udp_out()
    assert dst == B_ENDPOINT
    assert datagram[0] == 1  # an initiation
    return datagram


def _deliver(gateway: LoopGateway, datagram: bytes, src: tuple[str, int], now: float) -> bool:
    """Hand one datagram to the gateway's loop; True if it answered (a handshake response)."""
    assert gateway.udp_in([datagram], src) == 1
    gateway.run(now)
    return bool(gateway.udp_out())


def test_an_initiation_captured_before_a_restart_is_refused_after_it(
    config: Path, crypto_end: socket.socket, runstate: RunState
) -> None:
    first = _start(config, crypto_end, runstate)
    client_key = generate_private_key()
    change = PeerChange(
        public_key(client_key), allowed_ips=(ipaddress.ip_network(f"{A_INNER}/32"),)
    )
    assert first.backend.apply(SetRequest(peers=(change,))) == 0
    older = _initiation(first, client_key, START)
    newer = _initiation(first, client_key, START + 10)  # the client restarted meanwhile
    loop = _gateway(first)
    assert _deliver(loop, older, A_ENDPOINT, START)
    assert _deliver(loop, newer, A_ENDPOINT, START + 10)
    assert not _deliver(loop, older, ATTACKER, START + 11)  # refused before any restart

    second = _start(config, crypto_end, runstate)  # the crypto process restarted
    restarted = _gateway(second)
    peer = second.device.peer(public_key(client_key))
    assert peer is not None
    endpoint_before = peer.endpoint
    for captured in (newer, older):  # the greatest timestamp seen is the floor, as in the kernel
        assert not _deliver(restarted, captured, ATTACKER, START + 20)
        assert peer.endpoint == endpoint_before != ATTACKER
    assert restarted.counters[st.DROP_REPLAY] == 2
    assert second.device.drops[Drop.REPLAYED_TIMESTAMP] == 2
    fresh = _initiation(second, client_key, START + 30)  # the real client still gets in
    assert _deliver(restarted, fresh, A_ENDPOINT, START + 30)
    assert peer.endpoint == A_ENDPOINT


def test_a_restarted_crypto_process_continues_every_session_without_a_handshake(
    config: Path,
    crypto_end: socket.socket,
    runstate: RunState,
    caplog: pytest.LogCaptureFixture,
) -> None:
    first = _start(config, crypto_end, runstate)
    (client_key,) = _wg_peers(first, 1)
    client, gateway = _client(first, client_key), _gateway(first)
    inner = "10.7.0.1"
    client.rings.from_workers[0].send(ipv4_packet(inner, B_INNER))
    run_until_quiet(client, gateway, START)
    assert len([p for w in gateway.tun_out() for p in w]) == 1
    completed = first.device.counters["handshakes_completed"]
    assert completed == 1
    secrets = [kp.send_key.hex() for p in first.device.peers() for kp in p.keypairs.all()]

    with caplog.at_level(logging.DEBUG):
        second = _start(config, crypto_end, runstate)  # kill -9 and a new crypto process
    assert "restored 1 sessions" in caplog.text
    for secret in secrets + _secrets(second):
        assert secret not in caplog.text
    restarted = _gateway(second)
    packet = ipv4_packet(inner, B_INNER, b"after the restart")
    client.rings.from_workers[0].send(packet)
    run_until_quiet(client, restarted, START + 1)
    assert [p for w in restarted.tun_out() for p in w] == [packet]
    reply = ipv4_packet(B_INNER, inner, b"reply")
    restarted.rings.from_workers[0].send(reply)
    run_until_quiet(client, restarted, START + 1)
    assert [p for w in client.tun_out() for p in w] == [reply]
    assert second.device.counters["handshakes_completed"] == 0  # no new handshake
    assert client.device.counters["handshakes_initiated"] == 1


def test_a_session_that_could_not_be_kept_costs_one_round_trip(
    config: Path, crypto_end: socket.socket, runstate: RunState
) -> None:
    first = _start(config, crypto_end, runstate)
    (client_key,) = _wg_peers(first, 1)
    known = PeerChange(public_key(client_key), endpoint=A_ENDPOINT)  # `wg set ... endpoint`
    assert first.backend.apply(SetRequest(peers=(known,))) == 0
    client, gateway = _client(first, client_key), _gateway(first)
    inner = "10.7.0.1"
    client.rings.from_workers[0].send(ipv4_packet(inner, B_INNER))
    run_until_quiet(client, gateway, START)
    assert len([p for w in gateway.tun_out() for p in w]) == 1
    size = os.fstat(runstate.sessions_fd).st_size
    os.ftruncate(runstate.sessions_fd, 0)  # the sessions are lost (zeroed)
    os.ftruncate(runstate.sessions_fd, size)

    second = _start(config, crypto_end, runstate)
    restarted = _gateway(second)
    client.rings.from_workers[0].send(ipv4_packet(inner, B_INNER, b"lost"))
    run_until_quiet(client, restarted, START + 1)  # unknown index: the gateway initiates
    assert second.device.counters["lost_session_handshakes"] == 1
    assert second.device.counters["handshakes_completed"] == 1
    packet = ipv4_packet(inner, B_INNER, b"one round trip later")
    client.rings.from_workers[0].send(packet)
    run_until_quiet(client, restarted, START + 1)
    assert [p for w in restarted.tun_out() for p in w] == [packet]
    assert client.device.counters["handshakes_initiated"] == 1  # the client waited for nothing
