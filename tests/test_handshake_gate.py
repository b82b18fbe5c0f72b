"""The UDP process turns a flooding host's excess handshake messages away before the ring."""

from __future__ import annotations

from gateway.dataplane.framing import HEADER_SIZE, decode_endpoint
from gateway.dataplane.handshake_gate import HandshakeGate
from gateway.dataplane.udpproc import frame_received
from gateway.telemetry import stats as st
from gateway.wireguard.constants import DEFAULT_UNDER_LOAD_THRESHOLD
from gateway.wireguard.ratelimiter import PACKETS_BURSTABLE
from tests.dataplane_fakes import counter_block

NOW = 50.0
FLOODER = ("203.0.113.9", 40000)
CLIENT = ("198.51.100.7", 51820)
INITIATION = b"\x01\x00\x00\x00" + bytes(144)
TRANSPORT = b"\x04\x00\x00\x00" + bytes(60)


def _received(
    datagrams: list[tuple[bytes, tuple[str, int]]],
) -> list[tuple[memoryview, tuple[str, int]]]:
    return [(memoryview(d), src) for d, src in datagrams]


def test_a_flooding_hosts_excess_is_dropped_and_counted_and_transport_passes() -> None:
    gate = HandshakeGate()
    counters = counter_block()
    flood = [(INITIATION, FLOODER)] * 1000
    mixed = flood[:500] + [(TRANSPORT, CLIENT)] * 20 + flood[500:] + [(INITIATION, CLIENT)]
    messages = frame_received(_received(mixed), gate, 1500, counters, NOW)
    sources = [decode_endpoint(m) for m in messages]
    assert sources.count(CLIENT) == 21  # every transport message and the client's initiation
    passed = sources.count(FLOODER)
    # Not under load until the threshold; then the flooder has its burst and no more.
    assert passed == DEFAULT_UNDER_LOAD_THRESHOLD + PACKETS_BURSTABLE
    assert counters[st.DROP_RATE_LIMITED] == len(flood) - passed
    assert all(m[HEADER_SIZE:] in (INITIATION, TRANSPORT) for m in messages)
    assert counters[st.UDP_RX_PACKETS] == len(mixed)


def test_below_the_load_threshold_every_handshake_message_passes() -> None:
    gate = HandshakeGate()
    counters = counter_block()
    burst = [(INITIATION, FLOODER)] * DEFAULT_UNDER_LOAD_THRESHOLD  # many clients behind one NAT
    assert len(frame_received(_received(burst), gate, 1500, counters, NOW)) == len(burst)
    later = NOW + 1.1  # a second later the count starts again
    assert len(frame_received(_received(burst), gate, 1500, counters, later)) == len(burst)
    assert counters[st.DROP_RATE_LIMITED] == 0
