"""The crypto process's control paths: reloads and port news from the supervisor, `wg`
listen-port requests to it, and the run-time state a restarted crypto process restores."""

from __future__ import annotations

import ipaddress
import logging
import os
import select
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.config import load_config
from gateway.dataplane import control, cryptomain
from gateway.dataplane.cryptomain import CryptoControl
from gateway.dataplane.runstate import RunState
from gateway.keys import encode_key, generate_private_key, public_key
from gateway.uapi import PeerChange, SetRequest
from ippacket.build import udp_packet
from tests.dataplane_fakes import KeyBoard

NOW = 100.0


@pytest.fixture
def runstate() -> Iterator[RunState]:
    state = RunState()
    yield state
    state.close()


def _write_config(tmp_path: Path, peers: list[bytes]) -> Path:
    key = tmp_path / "private.key"
    if not key.exists():
        key.write_text(encode_key(generate_private_key()) + "\n")
        key.chmod(0o600)
    text = '[interface]\nname = "fzc0"\nprivate_key_file = "private.key"\n'
    for i, peer in enumerate(peers):
        text += f'\n[[peers]]\npublic_key = "{encode_key(peer)}"\nallowed_ips = ["10.1.0.{i}/32"]\n'
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return path


def _crypto(
    path: Path, crypto_end: socket.socket, runstate: RunState, board: KeyBoard
) -> CryptoControl:
    return CryptoControl(
        load_config(path),
        control_socket=crypto_end,
        runstate=runstate,
        listen_port=51820,
        key_board=board,
        now=NOW,
    )


def _peer() -> bytes:
    return public_key(generate_private_key())


def _acknowledged(supervisor_end: socket.socket) -> list[control.ToSupervisor]:
    return list(control.receive_messages(supervisor_end, control.decode_to_supervisor))


def test_a_reload_applies_the_config_the_supervisor_parsed_and_saves_the_state(
    tmp_path: Path, control_sockets: tuple[socket.socket, socket.socket], runstate: RunState
) -> None:
    """The config is parsed once, by the supervisor: a file that changes after that read
    changes neither process, so both run what the supervisor parsed."""
    supervisor_end, crypto_end = control_sockets
    old, new, later = _peer(), _peer(), _peer()
    path = _write_config(tmp_path, [old])
    board = KeyBoard()
    crypto = _crypto(path, crypto_end, runstate, board)
    _write_config(tmp_path, [new])
    parsed = load_config(path)  # the supervisor's one read
    control.send_reload(supervisor_end, 7, parsed)
    _write_config(tmp_path, [later])  # changed between the supervisor's read and the apply
    crypto.on_control(NOW)
    assert [p.public_key for p in crypto.device.peers()] == [p.public_key for p in parsed.peers]
    assert [p.public_key for p in crypto.device.peers()] == [new]
    assert _acknowledged(supervisor_end) == [control.ReloadDone(7, applied=True)]
    saved = runstate.load()
    assert saved is not None
    assert f"public_key={new.hex()}" in saved
    assert old.hex() not in saved
    assert board.public_key == crypto.device.public_key


def test_a_reload_whose_config_does_not_match_its_digest_is_refused(
    tmp_path: Path,
    control_sockets: tuple[socket.socket, socket.socket],
    runstate: RunState,
    caplog: pytest.LogCaptureFixture,
) -> None:
    supervisor_end, crypto_end = control_sockets
    peer = _peer()
    path = _write_config(tmp_path, [peer])
    crypto = _crypto(path, crypto_end, runstate, KeyBoard())
    fd = os.memfd_create("not-the-config")
    os.write(fd, b"\x80\x05N.")  # pickled None, not what the digest says
    message = control.Reload(3, size=4, digest=bytes(32))
    socket.send_fds(supervisor_end, [control.encode(message)], [fd])
    os.close(fd)
    control.send_message(supervisor_end, control.Reload(4, size=0, digest=bytes(32)))  # no fd
    with caplog.at_level(logging.ERROR):
        crypto.on_control(NOW)
    assert [p.public_key for p in crypto.device.peers()] == [peer]
    assert "reload 3: its config is not what the supervisor sent" in caplog.text
    assert "reload 4 came without its config" in caplog.text
    assert _acknowledged(supervisor_end) == [
        control.ReloadDone(3, applied=False),
        control.ReloadDone(4, applied=False),
    ]


def test_a_bad_record_is_skipped_and_the_next_message_still_handled(
    tmp_path: Path,
    control_sockets: tuple[socket.socket, socket.socket],
    runstate: RunState,
    caplog: pytest.LogCaptureFixture,
) -> None:
    supervisor_end, crypto_end = control_sockets
    peer = _peer()
    path = _write_config(tmp_path, [peer])
    crypto = _crypto(path, crypto_end, runstate, KeyBoard())
    _write_config(tmp_path, [])  # a reload now would remove the peer
    supervisor_end.send(b"reload")  # not a message: nothing is reloaded
    control.send_message(supervisor_end, control.ListenPortChanged(51999))
    with caplog.at_level(logging.ERROR):
        crypto.on_control(NOW)
    assert "ignored a control message" in caplog.text
    assert [p.public_key for p in crypto.device.peers()] == [peer]
    assert crypto.backend.listen_port == 51999  # what `wg show` reports


def test_an_mtu_change_sets_the_padding_mtu_and_nothing_else(
    tmp_path: Path, control_sockets: tuple[socket.socket, socket.socket], runstate: RunState
) -> None:
    supervisor_end, crypto_end = control_sockets
    crypto = _crypto(_write_config(tmp_path, []), crypto_end, runstate, KeyBoard())
    assert crypto.device.mtu == 1280  # the config's
    control.send_message(supervisor_end, control.MtuChanged(9000))  # `ip link set ... mtu`
    crypto.on_control(NOW)
    assert crypto.device.mtu == 9000
    assert crypto.backend.listen_port == 51820


def test_a_wg_listen_port_change_is_asked_of_the_supervisor(
    tmp_path: Path, control_sockets: tuple[socket.socket, socket.socket], runstate: RunState
) -> None:
    supervisor_end, crypto_end = control_sockets
    crypto = _crypto(_write_config(tmp_path, []), crypto_end, runstate, KeyBoard())
    assert crypto.backend.apply(SetRequest(listen_port=0)) == 0  # 0: any free port
    received = list(control.receive_messages(supervisor_end, control.decode_to_supervisor))
    assert received == [control.ListenPortRequest(0)]


def test_a_restarted_crypto_process_brings_back_peers_set_through_wg(
    tmp_path: Path, control_sockets: tuple[socket.socket, socket.socket], runstate: RunState
) -> None:
    _, crypto_end = control_sockets
    path = _write_config(tmp_path, [])
    first = _crypto(path, crypto_end, runstate, KeyBoard())
    added = _peer()
    change = PeerChange(public_key=added, allowed_ips=(ipaddress.ip_network("10.9.0.0/24"),))
    assert first.backend.apply(SetRequest(peers=(change,))) == 0
    board = KeyBoard()
    second = _crypto(path, crypto_end, runstate, board)
    assert second.device.peer(added) is None  # the config file alone does not have it
    second.restore_state()
    peer = second.device.peer(added)
    assert peer is not None
    assert [str(n) for n in peer.allowed_ips] == ["10.9.0.0/24"]
    assert board.public_key == second.device.public_key


def test_unusable_saved_state_is_logged_and_the_config_file_used(
    tmp_path: Path,
    control_sockets: tuple[socket.socket, socket.socket],
    runstate: RunState,
    caplog: pytest.LogCaptureFixture,
) -> None:
    _, crypto_end = control_sockets
    peer = _peer()
    crypto = _crypto(_write_config(tmp_path, [peer]), crypto_end, runstate, KeyBoard())
    runstate.save("private_key=not-hex\n")
    with caplog.at_level(logging.ERROR):
        crypto.restore_state()
    assert "run-time state not restored" in caplog.text
    assert [p.public_key for p in crypto.device.peers()] == [peer]


def test_the_firewall_works_and_the_proxy_handler_exists_only_with_resources(
    tmp_path: Path, control_sockets: tuple[socket.socket, socket.socket], runstate: RunState
) -> None:
    peer = _peer()
    path = _write_config(tmp_path, [peer])
    plain = _crypto(path, control_sockets[1], runstate, KeyBoard())
    # No resources: the loop is never given the firewall (no cost per packet).
    assert not plain.firewall.active and plain.proxy is None
    assert not plain.backend.refuse_proxy_ranges  # `wg set` may use those addresses then
    text = (
        path.read_text()
        .replace(
            'allowed_ips = ["10.1.0.0/32"]', 'allowed_ips = ["10.1.0.0/32"]\nresources = ["app"]'
        )
        .replace(
            'private_key_file = "private.key"\n',
            'private_key_file = "private.key"\naddresses = ["10.1.0.254/24"]\n',
        )
    )
    path.write_text(
        text
        + '\n[dns]\nupstreams = ["192.0.2.53"]\n'
        + '\n[[resources]]\nname = "app"\naddress = "app.corp.test"\n'
    )
    with_dns = _crypto(path, control_sockets[1], runstate, KeyBoard())
    assert with_dns.firewall.active and with_dns.proxy is not None
    assert with_dns.backend.refuse_proxy_ranges  # as check-config, for `wg set`
    packet = udp_packet(
        ipaddress.IPv4Address("10.1.0.0"), ipaddress.IPv4Address("100.96.0.1"), 1, 2
    )
    with_dns.proxy.from_peer(peer, packet, now=NOW)
    assert with_dns.proxy.counters["no_mapping"] == 1  # granted, but nothing mapped yet


def test_wg_set_listen_port_returns_once_the_supervisor_has_moved_the_socket(
    tmp_path: Path, control_sockets: tuple[socket.socket, socket.socket], runstate: RunState
) -> None:
    """As wireguard-go rebinds before `wg set listen-port` answers: a packet sent right after
    must not leave from the old port through the UDP process about to be replaced."""
    supervisor_end, crypto_end = control_sockets
    crypto = _crypto(_write_config(tmp_path, []), crypto_end, runstate, KeyBoard())
    moved = threading.Event()

    def supervisor() -> None:
        select.select([supervisor_end], [], [], 5)
        (request,) = control.receive_messages(supervisor_end, control.decode_to_supervisor)
        assert request == control.ListenPortRequest(51999)
        time.sleep(0.2)  # binding the new socket and forking the new UDP process
        moved.set()
        control.send_message(supervisor_end, control.ListenPortChanged(51999))

    thread = threading.Thread(target=supervisor)
    thread.start()
    try:
        assert crypto.backend.apply(SetRequest(listen_port=51999)) == 0
        assert moved.is_set()  # the answer waited for the move
        assert crypto.backend.listen_port == 51999
    finally:
        thread.join(5)


def test_an_unconfirmed_listen_port_change_stops_waiting(
    tmp_path: Path,
    control_sockets: tuple[socket.socket, socket.socket],
    runstate: RunState,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    _, crypto_end = control_sockets
    crypto = _crypto(_write_config(tmp_path, []), crypto_end, runstate, KeyBoard())
    monkeypatch.setattr(cryptomain, "LISTEN_PORT_WAIT", 0.05)
    with caplog.at_level(logging.WARNING):
        assert crypto.backend.apply(SetRequest(listen_port=51999)) == 0
    assert "listen port 51999: the supervisor did not confirm" in caplog.text
