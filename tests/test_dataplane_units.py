"""Unit tests of the data plane's pure parts: ring framing, flow choice, config to Device."""

from __future__ import annotations

import ipaddress
import struct
import time
import zlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as hs

from gateway.config import GatewayConfig, parse_config_text
from gateway.dataplane import framing
from gateway.dataplane.crypto_telemetry import CounterSync
from gateway.dataplane.device_config import apply_peers, build_device
from gateway.dataplane.flow import flow_key, flow_worker, key_worker
from gateway.endpoint import StickyEndpoint
from gateway.keys import encode_key, generate_private_key, public_key
from gateway.telemetry import stats as st
from gateway.wireguard.drops import Drop


@given(hs.ip_addresses(), hs.integers(0, 65535))
def test_endpoint_header_round_trips(address: ipaddress.IPv4Address, port: int) -> None:
    endpoint = (str(address), port)
    header = framing.encode_endpoint(endpoint)
    assert len(header) == framing.HEADER_SIZE
    host, decoded_port = framing.decode_endpoint(header + b"payload")
    assert (ipaddress.ip_address(host), decoded_port) == (address, port)


def test_bad_ring_messages_are_errors_not_crashes() -> None:
    with pytest.raises(framing.FramingError, match="no endpoint header"):
        framing.decode_endpoint(b"\x04\x00")
    with pytest.raises(framing.FramingError, match="unknown address family 9"):
        framing.decode_endpoint(bytes([9]) + bytes(framing.HEADER_SIZE - 1))


@pytest.mark.parametrize(
    ("remote", "local"),
    [(("198.51.100.7", 20000), "10.0.0.2"), (("2001:db8::7", 443), "fd00:aa::2")],
)
def test_a_local_address_rides_in_the_header_and_back(remote: tuple[str, int], local: str) -> None:
    packed = ipaddress.ip_address(local).packed
    received = framing.encode_endpoint(StickyEndpoint(*remote, packed))
    assert len(received) == framing.HEADER_SIZE
    # framing.remote_address reads the remote back (the handshake gate's and crypto loop's key).
    assert framing.remote_address(received) == ipaddress.ip_address(remote[0]).packed
    sender = framing.decode_endpoint(received + b"payload")
    assert sender == remote
    assert isinstance(sender, StickyEndpoint)
    assert sender.local == packed
    # A reply to that sender carries the same local address back to the UDP process.
    assert framing.encode_endpoint(sender) == received
    # Without one (an endpoint from the config or `wg`) the local field is zero: the
    # kernel chooses, and the sender decodes as a plain endpoint.
    plain = framing.encode_endpoint(remote)
    assert plain[:20] == received[:20]
    assert plain[20:] == bytes(16)
    assert type(framing.decode_endpoint(plain)) is tuple


def test_one_sender_at_two_local_addresses_gets_two_headers() -> None:
    # Equal (and equally hashed) as endpoints, so the header cache must tell them apart.
    first = StickyEndpoint("198.51.100.7", 20000, bytes([10, 0, 0, 1]))
    second = StickyEndpoint("198.51.100.7", 20000, bytes([10, 0, 0, 2]))
    assert first == second
    assert framing.encode_endpoint(first) != framing.encode_endpoint(second)
    assert framing.decode_endpoint(framing.encode_endpoint(second)).local == second.local


def test_a_ring_message_splits_into_sender_and_datagram() -> None:
    message = framing.encode_message(("2001:db8::7", 443), b"\x01rest")
    assert framing.carries_handshake(message)
    assert not framing.carries_handshake(framing.encode_message(("2001:db8::7", 443), b"\x04"))
    assert not framing.carries_handshake(message[: framing.HEADER_SIZE])
    sender, datagram = framing.decode_message(memoryview(message))
    assert (sender, bytes(datagram)) == (("2001:db8::7", 443), b"\x01rest")


def test_endpoint_caches_stay_bounded() -> None:
    for i in range(framing._CACHE_MAX + 10):
        host = f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"
        framing.decode_endpoint(framing.encode_endpoint((host, 1)))
        framing.decode_endpoint(
            framing.encode_endpoint(StickyEndpoint(host, 2, bytes(3) + b"\x01"))
        )
    assert len(framing._encoded) <= framing._CACHE_MAX
    assert len(framing._encoded_sticky) <= framing._CACHE_MAX
    assert len(framing._decoded) <= framing._CACHE_MAX


def _udp4(src: str, dst: str, sport: int, dport: int, *, frag: int = 0) -> bytes:
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 28, 0, frag, 64, 17, 0,
        ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed,
    )  # fmt: skip
    return header + struct.pack("!HHHH", sport, dport, 8, 0)


def _tcp6(src: str, dst: str, sport: int, dport: int) -> bytes:
    header = struct.pack(
        "!IHBB16s16s", 6 << 28, 20, 6, 64,
        ipaddress.IPv6Address(src).packed, ipaddress.IPv6Address(dst).packed,
    )  # fmt: skip
    return header + struct.pack("!HH", sport, dport) + bytes(16)


def test_every_packet_of_a_flow_goes_to_one_worker() -> None:
    for workers in (1, 2, 3, 4):
        for sport in range(1000, 1100):
            packet = _udp4("10.0.0.1", "10.0.0.2", sport, 53)
            choice = flow_worker(packet, workers)
            assert 0 <= choice < workers
            assert all(flow_worker(packet, workers) == choice for _ in range(3))
        v6 = _tcp6("fd00::1", "fd00::2", 40000, 443)
        assert flow_worker(v6, workers) == flow_worker(bytearray(v6), workers)


@given(
    hs.sampled_from([0x45, 0x46, 0x60, 0x50]),
    hs.sampled_from([6, 17, 1, 132, 58]),
    hs.integers(0, 0xFF),
    hs.binary(min_size=0, max_size=80),
    hs.integers(1, 4),
)
def test_the_worker_of_a_flow_key_is_the_packets_worker(
    first: int, protocol: int, fragment_byte: int, rest: bytes, workers: int
) -> None:
    """The loop hashes the firewall's flow key instead of the packet: same worker, always
    (packets of one flow must not be split between two workers by the firewall's presence)."""
    packet = bytearray(bytes([first]) + bytes(5) + bytes([fragment_byte & 0x3F, 0]) + rest)
    packet += bytes(max(0, 48 - len(packet)))  # room for either header's fixed fields
    packet[9 if first >> 4 == 4 else 6] = protocol  # IPv4: byte 9, IPv6: byte 6
    flow = flow_key(packet)
    if flow is not None:
        assert key_worker(flow, workers) == flow_worker(packet, workers)


def _reference_flow_key(packet: bytearray) -> tuple[int, bytes] | None:
    """flow_key as first written, byte by byte: the oracle for the struct version."""
    first = packet[0]
    if first == 0x45:
        if packet[6] & 0x3F or packet[7]:
            return None
        protocol, start, end = packet[9], 12, 24
    elif first >> 4 == 6:
        protocol, start, end = packet[6], 8, 44
    else:
        return None
    room = len(packet) - (end - 4)
    if protocol == 6:
        if room < 20 or not 20 <= (packet[end + 8] >> 4) * 4 <= room:
            return None
    elif protocol != 17 or room < 8:
        return None
    return protocol, bytes(packet[start:end])


@given(
    hs.sampled_from([0x45, 0x46, 0x60, 0x6F, 0x50]),
    hs.sampled_from([6, 17, 1, 58]),
    hs.integers(0, 0xFF),
    hs.integers(0, 0xFF),
    hs.binary(min_size=19, max_size=90),  # the core delivers at least an IPv4 header
)
def test_flow_key_reads_what_the_byte_by_byte_version_read(
    first: int, protocol: int, flags: int, data_offset: int, rest: bytes
) -> None:
    packet = bytearray(bytes([first]) + rest)
    if first >> 4 == 6:  # IPv6: next header at 6, TCP data offset at 52
        fields = {6: protocol, 52: data_offset}
    else:  # IPv4: flags/fragment at 6, protocol at 9, TCP data offset at 32
        fields = {6: flags, 9: protocol, 32: data_offset}
    for at, value in fields.items():
        if at < len(packet):
            packet[at] = value
    assert flow_key(packet) == _reference_flow_key(packet)


def test_flows_spread_over_workers() -> None:
    used = {flow_worker(_udp4("10.0.0.1", "10.0.0.2", p, 53), 4) for p in range(1000, 1064)}
    assert used == {0, 1, 2, 3}
    used6 = {flow_worker(_tcp6("fd00::1", "fd00::2", p, 443), 4) for p in range(1000, 1064)}
    assert used6 == {0, 1, 2, 3}


def test_fragments_of_a_flow_hash_on_addresses_only() -> None:
    # A later fragment has no ports: it must not depend on bytes that are payload there.
    a = _udp4("10.0.0.1", "10.0.0.2", 1111, 53, frag=0x0010)
    b = _udp4("10.0.0.1", "10.0.0.2", 2222, 80, frag=0x0010)
    assert flow_worker(a, 4) == flow_worker(b, 4)


def _config(tmp_path: Path, peers: list[tuple[bytes, str]]) -> GatewayConfig:
    key = tmp_path / "private.key"
    if not key.exists():
        key.write_text(encode_key(generate_private_key()) + "\n")
        key.chmod(0o600)
    text = '[interface]\nname = "fzu0"\nprivate_key_file = "private.key"\n'
    for pub, ips in peers:
        text += f'\n[[peers]]\npublic_key = "{encode_key(pub)}"\nallowed_ips = ["{ips}"]\n'
    return parse_config_text(text, base_dir=tmp_path, source="test.toml")


def test_reload_adds_removes_and_changes_peers_in_place(tmp_path: Path) -> None:
    a, b, c = (public_key(generate_private_key()) for _ in range(3))
    now = time.monotonic()
    device = build_device(_config(tmp_path, [(a, "10.0.0.2/32"), (b, "10.0.0.3/32")]), now)
    peer_a = device.peer(a)
    apply_peers(device, _config(tmp_path, [(a, "10.0.0.9/32"), (c, "10.0.0.4/32")]), now)
    assert device.peer(a) is peer_a  # same object: sessions and counters survive
    assert device.peer(b) is None
    assert device.peer(c) is not None
    peer = device.peer(a)
    assert peer is not None
    assert [str(n) for n in peer.allowed_ips] == ["10.0.0.9/32"]


def test_counter_sync_adds_only_deltas(tmp_path: Path) -> None:
    device = build_device(_config(tmp_path, []), time.monotonic())
    block = memoryview(bytearray(8 * st.PROCESS_BLOCK_WORDS)).cast("Q")
    sync = CounterSync(block)
    device.drops[Drop.REPLAY] += 2
    device.drops[Drop.SPOOFED_SOURCE] += 1
    device.counters["handshakes_completed"] += 1
    sync.sync(device)
    sync.sync(device)  # nothing new: nothing added
    device.drops[Drop.REPLAY] += 1
    sync.sync(device)
    assert block[st.DROP_REPLAY] == 3
    assert block[st.DROP_ALLOWED_IPS] == 1
    assert block[st.HANDSHAKES_COMPLETED] == 1


# /metrics label values and their order (the stats slots): fixed, dashboards depend on them.
EXPORTED_LABELS = (
    "malformed",
    "mac1_invalid",
    "cookie_required",
    "rate_limited",
    "unknown_receiver",
    "decrypt_failed",
    "replay",
    "no_session",
    "allowed_ips",
    "no_route",
    "policy",
    "ring_full",
    "too_big",
    "tun_write_failed",
    "udp_send_failed",
    "routing_header",
)
# The core's reasons and the label each is exported under, as before they became an enum.
CORE_REASON_LABELS = {
    "malformed": "malformed",
    "malformed_inner": "malformed",
    "malformed_packet": "malformed",
    "bad_cookie_reply": "malformed",
    "handshake_failed": "malformed",
    "bad_mac1": "mac1_invalid",
    "under_load_cookie": "cookie_required",
    "rate_limited": "rate_limited",
    "unknown_index": "unknown_receiver",
    "unknown_peer": "unknown_receiver",
    "decrypt_failed": "decrypt_failed",
    "expired_keypair": "no_session",
    "replay": "replay",
    "replayed_timestamp": "replay",
    "handshake_flood": "rate_limited",
    "spoofed_source": "allowed_ips",
    "no_peer_for_destination": "no_route",
    "no_endpoint": "no_session",
    "staged_overflow": "no_session",
    "handshake_gave_up": "no_session",
    "no_private_key": "no_session",
    "outbox_overflow": "ring_full",
}


def test_drop_slots_derive_from_the_core_enum() -> None:
    assert st.DROP_REASONS == EXPORTED_LABELS
    assert {str(reason): str(reason.label) for reason in Drop} == CORE_REASON_LABELS
    for reason, slot in st.CORE_DROP_SLOTS.items():
        assert st.DROP_REASONS[slot - st.DROP_BASE] == reason.label
    assert set(st.CORE_DROP_SLOTS) == set(Drop)


def test_the_worker_is_the_crc_of_addresses_then_ports() -> None:
    """The mapping is a fixed function (restarted processes and both directions agree on it):
    crc32 over the address pair, chained over the ports where the protocol has them."""
    for sport in range(1000, 1032):
        v4 = _udp4("10.0.0.1", "10.0.0.2", sport, 53)
        assert flow_worker(v4, 7) == zlib.crc32(v4[20:24], zlib.crc32(v4[12:20])) % 7
        v6 = _tcp6("fd00::1", "fd00::2", sport, 443)
        assert flow_worker(v6, 7) == zlib.crc32(v6[40:44], zlib.crc32(v6[8:40])) % 7


@given(hs.binary(min_size=1, max_size=60))
def test_flow_key_of_any_bytes_is_a_key_or_none(data: bytes) -> None:
    flow = flow_key(bytearray(data))
    assert flow is None or flow[0] in (6, 17)
