"""Fuzz: any bytes into a live Device never raise and never disturb an established session."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.wireguard import messages
from gateway.wireguard.constants import COOKIE_REPLY_SIZE, INITIATION_SIZE, RESPONSE_SIZE
from testbed.wire import A_ENDPOINT, A_INNER, B_INNER, Wire, ipv4_packet, make_wire

_WIRE: Wire | None = None
_SAMPLES: list[bytes] = []


def live_wire() -> Wire:
    """One established pair shared by the examples, plus a valid message of every type."""
    global _WIRE  # noqa: PLW0603 # built once: a handshake per example would be slow
    if _WIRE is None:
        wire = make_wire()
        wire.a.handle_packet(ipv4_packet(A_INNER, B_INNER), wire.now)
        (initiation,) = wire.a.take_transmits()
        wire.b.handle_datagram(initiation[1], A_ENDPOINT, wire.now)
        (response,) = wire.b.take_transmits()
        wire.a.handle_datagram(response[1], ("192.0.2.2", 51821), wire.now)
        wire.pump()
        data = wire.a.handle_packet(ipv4_packet(A_INNER, B_INNER), wire.now)
        assert data is not None
        cookie = bytearray(COOKIE_REPLY_SIZE)
        cookie[0] = 3
        _SAMPLES.extend([bytes(initiation[1]), bytes(response[1]), bytes(data[1]), bytes(cookie)])
        _WIRE = wire
    return _WIRE


def mutate(sample: bytes, flips: list[tuple[int, int]], cut: int) -> bytes:
    out = bytearray(sample)
    for pos, value in flips:
        out[pos % len(out)] = value
    return bytes(out[: max(0, len(out) - cut)])


def assert_session_intact(wire: Wire) -> None:
    (peer,) = wire.b.peers()
    current = peer.keypairs.current
    assert current is not None
    assert wire.send_a_to_b() is not None
    assert peer.keypairs.current is current


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200))
def test_random_bytes_never_raise(data: bytes) -> None:
    wire = live_wire()
    wire.b.handle_datagram(data, A_ENDPOINT, wire.now)
    wire.b.handle_datagram(memoryview(data), ("2001:db8::1", 5), wire.now)
    wire.b.handle_packet(data, wire.now)
    wire.b.take_transmits()
    assert_session_intact(wire)


@settings(max_examples=300, deadline=None)
@given(
    st.integers(0, 3),
    st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), max_size=4),
    st.integers(0, 40),
)
def test_mutated_messages_never_raise(which: int, flips: list[tuple[int, int]], cut: int) -> None:
    wire = live_wire()
    data = mutate(_SAMPLES[which], flips, cut)
    wire.b.handle_datagram(data, A_ENDPOINT, wire.now)
    wire.a.handle_datagram(data, ("192.0.2.2", 51821), wire.now)
    wire.b.take_transmits()
    wire.a.take_transmits()
    assert_session_intact(wire)


@given(st.binary(max_size=200))
def test_parsers_accept_only_exact_layouts(data: bytes) -> None:
    initiation = messages.parse_initiation(data)
    response = messages.parse_response(data)
    cookie = messages.parse_cookie_reply(data)
    assert (initiation is not None) == (len(data) == INITIATION_SIZE and data[:4] == b"\1\0\0\0")
    assert (response is not None) == (len(data) == RESPONSE_SIZE and data[:4] == b"\2\0\0\0")
    assert (cookie is not None) == (len(data) == COOKIE_REPLY_SIZE and data[:4] == b"\3\0\0\0")


def test_builders_round_trip() -> None:
    msg = messages.build_initiation(7, b"e" * 32, b"s" * 48, b"t" * 28)
    parsed = messages.parse_initiation(bytes(msg))
    assert parsed is not None
    assert (parsed.sender, parsed.ephemeral, parsed.encrypted_timestamp) == (
        7,
        b"e" * 32,
        b"t" * 28,
    )
    resp = messages.parse_response(bytes(messages.build_response(1, 2, b"e" * 32, b"n" * 16)))
    assert resp is not None
    assert (resp.sender, resp.receiver) == (1, 2)
