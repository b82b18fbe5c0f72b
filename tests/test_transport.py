"""The transport backends (gateway/dataplane/transport.py) one by one: each test runs on the
native extension and on the pure-Python fallback. The two compared byte for byte under
hostile input: tests/test_transport_differential.py."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from gateway.dataplane import transport as tr
from gateway.dataplane.transport_py import (
    D_DECRYPT,
    D_EXPIRED,
    D_MALFORMED_INNER,
    D_REPLAY,
    D_RING_FULL,
    D_SPOOFED,
    DONE,
    FULL,
)
from shm_ring import layout
from testbed.transport_cases import (
    CLIENT_ENDPOINT,
    CREATED,
    HEADER_SIZE,
    OTHER_ENDPOINT,
    client_address,
    client_transport,
    gateway_transport,
    ipv4_packet,
    pad,
    resource_address,
    run_inbound,
    run_outbound,
    seal,
)

BACKENDS = ["native", "python"]
NOW = CREATED + 1


def native_built() -> bool:
    try:
        from gateway import _native  # noqa: F401, PLC0415 - probing
    except ImportError:
        return False
    return True


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    if name == "native" and not native_built():
        pytest.skip("the native extension is not built (no Rust toolchain at install)")
    return name


def test_the_extension_is_built_where_cargo_is() -> None:
    """make venv builds it when cargo exists; a silently missing extension would leave the
    native half of every test here skipped."""
    if shutil.which("cargo") is None:
        pytest.skip("no cargo on this machine: the fallback is the product here")
    assert native_built()


def test_backend_choice_follows_the_environment() -> None:
    code = "from gateway.dataplane import transport as t; print(t.BACKEND, t.new_transport().name)"
    env = {**os.environ, tr.NO_EXTENSIONS_ENV: "1"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["python", "python"]
    if native_built():
        env.pop(tr.NO_EXTENSIONS_ENV)
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        assert out.stdout.split() == ["native", "native"]


def test_native_layout_mirrors_shm_ring_layout() -> None:
    if not native_built():
        pytest.skip("the native extension is not built")
    from gateway import _native  # noqa: PLC0415 - only when built

    mirrored = _native.layout_constants()
    assert mirrored  # every name it lists must match the Python definition
    for name, value in mirrored.items():
        assert getattr(layout, name) == value, name
    python_words = {n for n in dir(layout) if n.startswith("W_")}
    assert python_words <= set(mirrored), python_words - set(mirrored)


def test_datagrams_are_opened_checked_and_routed(backend: str) -> None:
    gateway, clients = gateway_transport(backend), client_transport()
    inner = [ipv4_packet(client_address(1), resource_address(), n) for n in (20, 100, 1280)]
    messages = [CLIENT_ENDPOINT + seal(clients, 1, pad(p)) for p in inner]
    out = run_inbound(gateway, messages, now=NOW)
    assert sorted(p for ring in out.rings for p in ring) == sorted(inner)  # padding trimmed
    assert out.punted == []
    assert out.drops == [0] * 6
    assert out.activity == [(101, 3, sum(len(m) - HEADER_SIZE for m in messages), 0, 0)]


def test_replays_forgeries_expiry_and_spoofing_are_counted(backend: str) -> None:
    gateway, clients = gateway_transport(backend), client_transport()
    good = CLIENT_ENDPOINT + seal(
        clients, 1, ipv4_packet(client_address(1), resource_address(), 64)
    )
    forged = bytearray(good)
    forged[-1] ^= 1
    spoofed = CLIENT_ENDPOINT + seal(clients, 1, ipv4_packet(client_address(2), bytes(4), 64))
    garbage = CLIENT_ENDPOINT + seal(clients, 1, b"\x45" + bytes(63))  # length field 0
    out = run_inbound(gateway, [good, good, bytes(forged), spoofed, garbage], now=NOW)
    assert sum(map(len, out.rings)) == 1
    drops = [0] * 6
    drops[D_REPLAY] = drops[D_DECRYPT] = drops[D_SPOOFED] = drops[D_MALFORMED_INNER] = 1
    assert out.drops == drops
    late = run_inbound(gateway, [good], now=CREATED + 180)
    assert late.drops[D_EXPIRED] == 1


def test_what_python_handles_stops_the_batch_in_order(backend: str) -> None:
    gateway, clients = gateway_transport(backend, confirmed=False), client_transport()

    def data(peer: int) -> bytes:
        inner = ipv4_packet(client_address(peer), resource_address(), 40)
        return CLIENT_ENDPOINT + seal(clients, peer, inner)

    handshake = CLIENT_ENDPOINT + bytes([1, 0, 0, 0]) + bytes(144)
    keepalive = CLIENT_ENDPOINT + seal(clients, 2, b"")
    roamed = OTHER_ENDPOINT + seal(clients, 2, ipv4_packet(client_address(2), bytes(4), 40))
    unknown = CLIENT_ENDPOINT + bytes([4, 0, 0, 0, 9, 9, 9, 9]) + bytes(72)
    unconfirmed = data(1)  # peer 1's session waits for the Device to confirm it
    messages = [data(2), handshake, data(3), keepalive, roamed, unknown, unconfirmed, data(2)]
    out = run_inbound(gateway, messages, now=NOW)
    assert out.punted == [handshake, keepalive, roamed, unknown, unconfirmed]
    assert [taken for taken, _ in out.stops] == [1, 1, 0, 0, 0, 1, 0]
    assert sum(map(len, out.rings)) == 3


def test_messages_of_several_slots_and_bad_lengths_are_pythons(backend: str) -> None:
    gateway, clients = gateway_transport(backend), client_transport()
    small = CLIENT_ENDPOINT + seal(clients, 1, ipv4_packet(client_address(1), bytes(4), 40))
    big = CLIENT_ENDPOINT + bytes(3000)  # spans slots: Ring.recv_many reads it
    out = run_inbound(gateway, [small, big], now=NOW)
    assert out.punted == [small, big]  # while a spanning message waits, all go to Python
    bent = run_inbound(gateway, [small, small], now=NOW, lengths=[(0, 0), (1, 5000)])
    assert [len(p) for p in bent.punted] == [0, 5000]


def test_a_half_written_message_is_never_read(backend: str) -> None:
    gateway = gateway_transport(backend)
    out = run_inbound(gateway, [], now=NOW, torn=CLIENT_ENDPOINT + bytes(100))
    assert out.stops == [(0, DONE)]
    assert out.punted == []


def test_a_full_worker_ring_counts_drops(backend: str) -> None:
    gateway, clients = gateway_transport(backend), client_transport()
    inner = ipv4_packet(client_address(1), resource_address(), 40)
    messages = [CLIENT_ENDPOINT + seal(clients, 1, inner) for _ in range(6)]
    out = run_inbound(gateway, messages, now=NOW, workers=1, worker_slots=4)
    assert len(out.rings[0]) == 4
    assert out.drops[D_RING_FULL] == 2


def test_packets_are_sealed_for_their_peer_and_open_on_the_other_side(backend: str) -> None:
    gateway, clients = gateway_transport(backend), client_transport()
    packets = [ipv4_packet(resource_address(), client_address(p), 20 + 100 * p) for p in (1, 2, 3)]
    out = run_outbound(gateway, packets, now=NOW)
    assert out.punted == []
    sealed = out.rings[0]
    assert [m[:HEADER_SIZE] for m in sealed] == [CLIENT_ENDPOINT] * 3
    for peer, message, packet in zip((1, 2, 3), sealed, packets, strict=True):
        plain = bytearray(len(message) - HEADER_SIZE - 32)
        assert clients.open(200 + peer, message[HEADER_SIZE:], plain) == 0
        assert bytes(plain) == pad(packet)
    assert [a[0] for a in out.activity] == [101, 102, 103]


def test_packets_without_a_usable_session_are_pythons(backend: str) -> None:
    gateway = gateway_transport(backend)
    routed = ipv4_packet(resource_address(), client_address(1), 60)
    unrouted = ipv4_packet(resource_address(), bytes([192, 0, 2, 1]), 60)
    gateway.set_peer(2, CLIENT_ENDPOINT, None)  # staged packets: Python sends
    staged = ipv4_packet(resource_address(), client_address(2), 60)
    short = routed[:19]
    out = run_outbound(gateway, [routed, unrouted, staged, short, routed], now=NOW)
    assert out.punted == [unrouted, staged, short]
    assert len(out.rings[0]) == 2
    expired = run_outbound(gateway, [routed], now=CREATED + 180)
    assert expired.punted == [routed]


def test_a_full_udp_ring_stops_the_batch(backend: str) -> None:
    gateway = gateway_transport(backend)
    packet = ipv4_packet(resource_address(), client_address(1), 60)
    out = run_outbound(gateway, [packet] * 5, now=NOW, udp_slots=3)
    assert out.stops[0] == (3, FULL)
    listed = run_outbound(
        gateway_transport(backend), [packet] * 5, now=NOW, udp_slots=3, as_list=True
    )
    assert listed.stops == [(3, FULL)]


def test_send_counters_are_never_reused(backend: str) -> None:
    gateway = gateway_transport(backend)
    packet = ipv4_packet(resource_address(), client_address(1), 60)
    run_outbound(gateway, [packet] * 3, now=NOW)
    assert gateway.send_counter(101) == 3
    out = bytearray(16 + 32)
    assert gateway.seal(101, bytes(16), out)  # the Device's own packet takes the next one
    assert int.from_bytes(out[8:16], "little") == 3
    assert not gateway.advance_send_counter(101, 2)
    assert gateway.advance_send_counter(101, 2**64 - 2**13 - 1)
    assert not gateway.seal(101, bytes(16), out)
    assert run_outbound(gateway, [packet], now=NOW).punted == [packet]


def test_a_kept_sessions_limit_and_window_carry_over(backend: str) -> None:
    """The session table's needs (gateway/wireguard/sessions.py): no counter at or past the
    persisted limit is used, natively or not; a window exported and loaded into a successor
    rejects what the predecessor accepted."""
    gateway, clients = gateway_transport(backend), client_transport()
    assert gateway.set_send_limit(101, 2)
    packet = ipv4_packet(resource_address(), client_address(1), 60)
    out = run_outbound(gateway, [packet] * 3, now=NOW)
    assert len(out.rings[0]) == 2
    assert out.punted == [packet]  # the Device persists the next block, then sends it
    sealed = bytearray(16 + 32)
    assert not gateway.seal(101, bytes(16), sealed)
    assert gateway.set_send_limit(101, 4096)
    assert gateway.seal(101, bytes(16), sealed)
    message = CLIENT_ENDPOINT + seal(clients, 1, ipv4_packet(client_address(1), bytes(4), 40))
    assert len(run_inbound(gateway, [message], now=NOW).rings[0] + []) <= 1
    window = gateway.replay_window(101)
    assert window is not None
    successor = gateway_transport(backend)
    assert successor.load_replay_window(101, window)
    assert successor.replay_window(101) == window
    replayed = run_inbound(successor, [message], now=NOW)
    assert replayed.drops[D_REPLAY] == 1
    assert not successor.load_replay_window(101, window[:-8])
