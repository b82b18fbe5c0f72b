"""IPv4 packet builders and parsers (ICMP echo, UDP) for the TUN tests and bench_tunio."""

from __future__ import annotations

import ipaddress
import struct

IPV4_HEADER = 20
PROTO_ICMP = 1
PROTO_UDP = 17
ICMP_ECHO_REQUEST = 8
ICMP_ECHO_REPLY = 0


def checksum(data: bytes | bytearray) -> int:
    if len(data) % 2:
        data = bytes(data) + b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ipv4(src: str, dst: str, proto: int, payload: bytes, ttl: int = 64) -> bytes:
    header = bytearray(
        struct.pack(
            "!BBHHHBBH4s4s", 0x45, 0, IPV4_HEADER + len(payload), 0, 0x4000, ttl, proto, 0,
            ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed,
        )
    )  # fmt: skip
    struct.pack_into("!H", header, 10, checksum(header))
    return bytes(header) + payload


def udp(src: str, sport: int, dst: str, dport: int, payload: bytes) -> bytes:
    # UDP checksum 0 means "none" on IPv4; the kernel accepts it.
    header = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0)
    return ipv4(src, dst, PROTO_UDP, header + payload)


def parse_udp(packet: bytes) -> tuple[str, int, str, int, bytes] | None:
    """(src, sport, dst, dport, payload) of an IPv4 UDP packet, else None."""
    if len(packet) < IPV4_HEADER + 8 or packet[0] >> 4 != 4 or packet[9] != PROTO_UDP:
        return None
    ihl = (packet[0] & 0x0F) * 4
    sport, dport, length, _ = struct.unpack_from("!HHHH", packet, ihl)
    src = str(ipaddress.IPv4Address(packet[12:16]))
    dst = str(ipaddress.IPv4Address(packet[16:20]))
    return src, sport, dst, dport, packet[ihl + 8 : ihl + length]


def udp_echo(packet: bytes, trailer: bytes = b"") -> bytes | None:
    """The reply a UDP echo server would send (payload + trailer), or None if not UDP."""
    parsed = parse_udp(packet)
    if parsed is None:
        return None
    src, sport, dst, dport, payload = parsed
    return udp(dst, dport, src, sport, payload + trailer)


def icmp_echo_reply(packet: bytes) -> bytes | None:
    """The echo reply to an IPv4 ICMP echo request, or None for any other packet."""
    if len(packet) < IPV4_HEADER + 8 or packet[0] >> 4 != 4 or packet[9] != PROTO_ICMP:
        return None
    ihl = (packet[0] & 0x0F) * 4
    if packet[ihl] != ICMP_ECHO_REQUEST:
        return None
    icmp = bytearray(packet[ihl:])
    icmp[0] = ICMP_ECHO_REPLY
    icmp[2:4] = b"\0\0"
    struct.pack_into("!H", icmp, 2, checksum(icmp))
    src = str(ipaddress.IPv4Address(packet[12:16]))
    dst = str(ipaddress.IPv4Address(packet[16:20]))
    return ipv4(dst, src, PROTO_ICMP, bytes(icmp))
