"""The native transport and the pure-Python fallback, fed the same batches (hostile ones
included), must produce the same bytes: ring contents and header words, the messages left to
Python, drops and per-session figures (gateway/dataplane/transport.py)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from testbed.transport_cases import (
    CLIENT_ENDPOINT,
    CREATED,
    OTHER_ENDPOINT,
    SESSIONS,
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

try:
    from gateway import _native  # noqa: F401 - only to know whether it is built
except ImportError:  # pragma: no cover - a machine without a Rust toolchain
    pytest.skip("the native extension is not built", allow_module_level=True)

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

peers = st.integers(1, SESSIONS + 1)  # SESSIONS + 1: a peer the gateway does not have
sizes = st.integers(0, 1400)


@st.composite
def inner_packets(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["good", "spoofed", "short", "v6", "junk", "lying"]))
    peer = draw(st.integers(1, SESSIONS))
    size = draw(st.integers(20, 1300))
    if kind == "good":
        return ipv4_packet(
            client_address(peer, draw(st.integers(0, 255))), resource_address(), size
        )
    if kind == "spoofed":
        return ipv4_packet(bytes(draw(st.binary(min_size=4, max_size=4))), resource_address(), size)
    if kind == "short":
        return draw(st.binary(max_size=40))
    if kind == "v6":
        packet = bytearray(draw(st.binary(min_size=40, max_size=200)))
        packet[0] = 0x60
        packet[4:6] = ((len(packet) - 40 - draw(st.integers(-2, 2))) % 65536).to_bytes(2, "big")
        return bytes(packet)
    if kind == "lying":  # the header claims more (or less) than there is
        packet = bytearray(ipv4_packet(client_address(peer), resource_address(), size))
        packet[2:4] = draw(st.integers(0, 65535)).to_bytes(2, "big")
        return bytes(packet)
    return draw(st.binary(min_size=1, max_size=300))


@st.composite
def udp_messages(draw: st.DrawFn) -> list[bytes]:
    """A batch as the UDP process would write it, from clients and attackers."""
    clients = client_transport()
    sent: list[bytes] = []
    out = []
    for _ in range(draw(st.integers(0, 40))):
        kind = draw(
            st.sampled_from(
                [
                    "data",
                    "data",
                    "data",
                    "replay",
                    "tag",
                    "truncate",
                    "index",
                    "handshake",
                    "keepalive",
                    "roam",
                    "random",
                    "counter",
                    "family",
                ]
            )
        )
        peer = draw(st.integers(1, SESSIONS))
        inner = draw(inner_packets())
        if kind == "replay" and sent:
            out.append(draw(st.sampled_from(sent)))
            continue
        if kind == "random":
            out.append(draw(st.binary(min_size=1, max_size=1500)))
            continue
        if kind == "handshake":
            body = bytes([draw(st.integers(1, 3)), 0, 0, 0]) + draw(st.binary(max_size=200))
            out.append(CLIENT_ENDPOINT + body)
            continue
        counter = draw(st.integers(0, 2**64 - 1)) if kind == "counter" else None
        try:
            datagram = seal(
                clients, peer, b"" if kind == "keepalive" else pad(inner), counter=counter
            )
        except ValueError:
            continue
        message = bytearray((OTHER_ENDPOINT if kind == "roam" else CLIENT_ENDPOINT) + datagram)
        if kind == "tag":
            message[draw(st.integers(36, len(message) - 1))] ^= 1 << draw(st.integers(0, 7))
        elif kind == "truncate":
            message = message[: draw(st.integers(0, len(message) - 1))]
        elif kind == "index":
            message[40:44] = draw(st.binary(min_size=4, max_size=4))
        elif kind == "family":
            message[0] = draw(st.integers(0, 255))
        if message:
            out.append(bytes(message))
            sent.append(bytes(message))
    return out


@SETTINGS
@given(
    messages=udp_messages(),
    now=st.sampled_from([CREATED, CREATED + 1, CREATED + 179.999, CREATED + 180, CREATED - 5]),
    workers=st.integers(1, 3),
    worker_slots=st.integers(1, 40),
    limit=st.integers(1, 64),
    confirmed=st.booleans(),
    packets=st.booleans(),
)
def test_inbound_batches_match(
    messages: list[bytes],
    now: float,
    workers: int,
    worker_slots: int,
    limit: int,
    confirmed: bool,
    packets: bool,
) -> None:
    native, python = (
        run_inbound(
            gateway_transport(backend, confirmed=confirmed),
            messages,
            now=now,
            workers=workers,
            worker_slots=worker_slots,
            limit=limit,
            packets=packets,
        )
        for backend in ("native", "python")
    )
    assert native == python


@SETTINGS
@given(
    messages=udp_messages(),
    lengths=st.lists(st.tuples(st.integers(0, 40), st.integers(0, 70000)), max_size=3),
    torn=st.one_of(st.none(), st.binary(max_size=2000)),
)
def test_a_broken_ring_is_read_the_same(
    messages: list[bytes], lengths: list[tuple[int, int]], torn: bytes | None
) -> None:
    """Lengths a writer that went wrong left in published slots, and a message a dead
    writer half wrote past the head."""
    native = run_inbound(
        gateway_transport("native"), messages, now=CREATED + 1, lengths=lengths, torn=torn
    )
    python = run_inbound(
        gateway_transport("python"), messages, now=CREATED + 1, lengths=lengths, torn=torn
    )
    assert native == python


@st.composite
def tun_packets(draw: st.DrawFn) -> list[bytes]:
    out = []
    for _ in range(draw(st.integers(0, 40))):
        kind = draw(st.sampled_from(["routed", "routed", "v6", "unrouted", "junk", "big"]))
        size = draw(st.integers(20, 1280))
        if kind == "routed":
            peer = draw(st.integers(1, SESSIONS))
            out.append(ipv4_packet(resource_address(), client_address(peer, 9), size))
        elif kind == "v6":
            packet = bytearray(draw(st.binary(min_size=40, max_size=400)))
            packet[0] = 0x60
            out.append(bytes(packet))
        elif kind == "unrouted":
            out.append(ipv4_packet(resource_address(), bytes([192, 0, 2, 1]), size))
        elif kind == "big":
            out.append(
                ipv4_packet(resource_address(), client_address(1), draw(st.integers(1281, 3000)))
            )
        else:
            out.append(draw(st.binary(min_size=1, max_size=100)))
    return out


@SETTINGS
@given(
    packets=tun_packets(),
    now=st.sampled_from([CREATED + 1, CREATED + 180]),
    mtu=st.sampled_from([0, 100, 1001, 1100, 1280, 1420]),  # padding clamped to the MTU
    udp_slots=st.integers(1, 40),
    limit=st.integers(1, 64),
    lengths=st.lists(st.tuples(st.integers(0, 40), st.integers(0, 5000)), max_size=2),
    as_list=st.booleans(),
    staged=st.integers(0, SESSIONS),
    send_limit=st.integers(0, 50),
)
def test_outbound_batches_match(
    packets: list[bytes],
    now: float,
    mtu: int,
    udp_slots: int,
    limit: int,
    lengths: list[tuple[int, int]],
    as_list: bool,
    staged: int,
    send_limit: int,
) -> None:
    outcomes = []
    for backend in ("native", "python"):
        gateway = gateway_transport(backend)
        if staged:
            gateway.set_peer(staged, CLIENT_ENDPOINT, None)
        gateway.set_send_limit(101, send_limit)  # a kept session's block of counters
        outcomes.append(
            run_outbound(
                gateway,
                packets,
                now=now,
                mtu=mtu,
                udp_slots=udp_slots,
                limit=limit,
                lengths=() if as_list else lengths,
                as_list=as_list,
            )
        )
    assert outcomes[0] == outcomes[1]
