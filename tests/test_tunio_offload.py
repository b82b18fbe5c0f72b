"""User-space GRO for TUN writes: which segments merge, and the super-packet's headers."""

from __future__ import annotations

import ipaddress
import struct

from hypothesis import given
from hypothesis import strategies as hs

from tunio.offload import (
    PLAIN_HDR,
    VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_NET_HDR_GSO_TCPV4,
    VIRTIO_NET_HDR_GSO_TCPV6,
    VNET_HDR,
    coalesce,
)

ACK, PSH, FIN, SYN = 0x10, 0x08, 0x01, 0x02
OPTS = bytes([1, 1, 8, 10]) + struct.pack("!II", 1000, 2000)  # NOP NOP timestamps


def _sum16(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    return sum(struct.unpack(f"!{len(data) // 2}H", data))


def _fold(total: int) -> int:
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def tcp(seq: int, payload: bytes, *, flags: int = ACK, v6: bool = False, sport: int = 40000,
        opts: bytes = OPTS, ttl: int = 64) -> bytes:  # fmt: skip
    header = struct.pack("!HHIIBBHHH", sport, 5201, seq, 777, (5 + len(opts) // 4) << 4,
                         flags, 512, 0, 0) + opts  # fmt: skip
    segment = header + payload
    if v6:
        src, dst = ipaddress.IPv6Address("fd00::2").packed, ipaddress.IPv6Address("fd01::2").packed
        ip = struct.pack("!IHBB", 6 << 28, len(segment), 6, ttl) + src + dst
    else:
        src, dst = (
            ipaddress.IPv4Address("10.0.0.2").packed,
            ipaddress.IPv4Address("10.1.0.2").packed,
        )
        ip = bytearray(
            struct.pack("!BBHHHBBH", 0x45, 0, 20 + len(segment), 1, 0x4000, ttl, 6, 0) + src + dst
        )
        struct.pack_into("!H", ip, 10, _fold(_sum16(bytes(ip))) ^ 0xFFFF)
    return bytes(ip) + segment


def flat(iovec: list[bytes | bytearray | memoryview]) -> bytes:
    return b"".join(bytes(part) for part in iovec)


def test_contiguous_segments_become_one_super_packet_v4() -> None:
    segs = [tcp(1000 + i * 100, bytes([i]) * 100) for i in range(5)]
    [write] = coalesce(segs)
    data = flat(write)
    flags, gso, hdr_len, gso_size, csum_start, csum_off = VNET_HDR.unpack_from(data)
    assert (flags, gso, gso_size, csum_start, csum_off) == (
        VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4, 100, 20, 16,
    )  # fmt: skip
    packet = data[10:]
    assert hdr_len == 20 + 20 + len(OPTS)
    assert struct.unpack_from("!H", packet, 2)[0] == len(packet)
    assert _fold(_sum16(packet[:20])) == 0xFFFF  # valid IPv4 header checksum
    assert packet[hdr_len:] == b"".join(bytes([i]) * 100 for i in range(5))
    # The kernel finishes the checksum: sum from csum_start with the pseudo-header preset.
    segment = packet[20:]
    full = _fold(_sum16(segment)) ^ 0xFFFF
    scratch = bytearray(segment)
    scratch[16:18] = b"\0\0"
    pseudo = _sum16(packet[12:20]) + 6 + len(segment)
    assert full == _fold(pseudo + _sum16(bytes(scratch))) ^ 0xFFFF


def test_ipv6_segments_merge_with_the_v6_gso_type() -> None:
    segs = [tcp(5 + i * 64, b"x" * 64, v6=True) for i in range(3)]
    [write] = coalesce(segs)
    data = flat(write)
    assert VNET_HDR.unpack_from(data)[1] == VIRTIO_NET_HDR_GSO_TCPV6
    packet = data[10:]
    assert struct.unpack_from("!H", packet, 4)[0] == len(packet) - 40


def test_what_must_not_merge_goes_alone_in_flow_order() -> None:
    a = tcp(0, b"a" * 50)
    b = tcp(50, b"b" * 50)
    gap = tcp(200, b"c" * 50)  # not contiguous
    fin = tcp(250, b"", flags=ACK | FIN)
    writes = [flat(w) for w in coalesce([a, b, gap, fin])]
    assert len(writes) == 3
    assert writes[0][10:].endswith(b"a" * 50 + b"b" * 50)
    assert writes[1] == PLAIN_HDR + gap
    assert writes[2] == PLAIN_HDR + fin  # after the data it follows


def test_psh_or_a_short_segment_ends_a_run() -> None:
    segs = [tcp(0, b"a" * 100), tcp(100, b"b" * 40, flags=ACK | PSH), tcp(140, b"c" * 100)]
    writes = coalesce(segs)
    assert len(writes) == 2
    merged = flat(writes[0])[10:]
    assert merged[33] & PSH  # PSH of the last merged segment kept
    short = [tcp(0, b"a" * 100), tcp(100, b"b" * 40), tcp(140, b"c" * 40)]
    assert len(coalesce(short)) == 2


def test_different_flows_options_or_ttl_do_not_merge() -> None:
    other_flow = [tcp(0, b"a" * 10, sport=1), tcp(10, b"b" * 10, sport=2)]
    assert all(len(w) == 2 for w in coalesce(other_flow))
    other_opts = [tcp(0, b"a" * 12), tcp(12, b"b" * 12, opts=bytes([1, 1, 8, 10]) + bytes(8))]
    assert len(coalesce(other_opts)) == 2
    other_ttl = [tcp(0, b"a" * 12), tcp(12, b"b" * 12, ttl=3)]
    assert len(coalesce(other_ttl)) == 2
    syn = [tcp(0, b"", flags=SYN)]
    assert coalesce(syn) == [[PLAIN_HDR, syn[0]]]


def test_interleaved_flows_each_merge() -> None:
    a = [tcp(i * 10, b"a" * 10, sport=1) for i in range(3)]
    b = [tcp(i * 10, b"b" * 10, sport=2) for i in range(3)]
    writes = coalesce([x for pair in zip(a, b, strict=True) for x in pair])
    assert len(writes) == 2
    assert {len(w) for w in writes} == {6}  # header, IP, TCP, three payloads


def test_runs_are_bounded_by_segment_count() -> None:
    segs = [tcp(i * 10, b"z" * 10) for i in range(150)]
    writes = coalesce(segs)
    assert [len(w) - 3 for w in writes] == [64, 64, 22]


@given(hs.lists(hs.binary(min_size=0, max_size=80), max_size=20))
def test_garbage_passes_through_untouched(blobs: list[bytes]) -> None:
    writes = coalesce(blobs)
    assert sorted(flat(w)[10:] for w in writes) == sorted(blobs)


def _checksummed(packet: bytes) -> bytes:
    """Fill in the TCP checksum of an IPv4 packet built by tcp()."""
    data = bytearray(packet)
    segment = data[20:]
    pseudo = _sum16(bytes(data[12:20])) + 6 + len(segment)
    struct.pack_into("!H", data, 36, _fold(pseudo + _sum16(bytes(segment))) ^ 0xFFFF)
    return bytes(data)


def _endpoints(packet: bytes, src: str, dst: str, sport: int, dport: int) -> bytes:
    data = bytearray(packet)
    data[12:16] = ipaddress.IPv4Address(src).packed
    data[16:20] = ipaddress.IPv4Address(dst).packed
    struct.pack_into("!HH", data, 20, sport, dport)
    data[10:12] = b"\0\0"
    struct.pack_into("!H", data, 10, _fold(_sum16(bytes(data[:20]))) ^ 0xFFFF)
    return _checksummed(bytes(data))


def test_kernel_accepts_a_super_packet_into_a_real_tcp_connection() -> None:
    """A TCP listener behind a vnet_hdr TUN receives merged segments intact and in order."""
    import socket  # noqa: PLC0415 - only this test
    import time  # noqa: PLC0415

    from testbed.netns import NetNS, unique_name  # noqa: PLC0415
    from tunio._netns import entered_netns  # noqa: PLC0415
    from tunio.linux import open_multiqueue  # noqa: PLC0415

    ns = NetNS("fzgro")
    name = unique_name("fzgro")
    try:
        [queue] = open_multiqueue(name, 1, netns=ns.name, vnet_hdr=True)
        ns.ip("addr", "add", "10.9.0.1/24", "dev", name)
        ns.ip("link", "set", name, "up")
        with entered_netns(ns.name):
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("10.9.0.1", 7000))
        listener.listen(1)
        me, peer, sport = "10.9.0.2", "10.9.0.1", 45000

        def send(seq: int, payload: bytes, flags: int, ack: int) -> None:
            raw = bytearray(tcp(seq, payload, flags=flags, opts=b""))
            struct.pack_into("!I", raw, 28, ack)
            assert queue.send(_endpoints(bytes(raw), me, peer, sport, 7000))

        def read_synack() -> int:
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                for pkt in queue.recv_many():
                    if pkt[9] == 6 and pkt[33] & (SYN | ACK) == SYN | ACK:
                        return int(struct.unpack_from("!I", pkt, 24)[0])
                time.sleep(0.01)
            raise TimeoutError("no SYN-ACK from the listener")

        send(1000, b"", SYN, 0)
        server_seq = read_synack()
        send(1001, b"", ACK, server_seq + 1)
        conn, _ = listener.accept()
        payload = bytes(range(256)) * 20  # 5120 bytes in 10 segments of 512
        segs = []
        for i in range(10):
            raw = bytearray(tcp(1001 + i * 512, payload[i * 512 : (i + 1) * 512], opts=b""))
            struct.pack_into("!I", raw, 28, server_seq + 1)
            segs.append(_endpoints(bytes(raw), me, peer, sport, 7000))
        assert queue.send_many(segs) == 10
        assert queue.stats.coalesced == 10  # one write carried them all
        conn.settimeout(5)
        received = b""
        while len(received) < len(payload):
            received += conn.recv(65536)
        assert received == payload
        conn.close()
        listener.close()
        queue.close()
    finally:
        ns.close()
