"""Two sans-I/O Devices joined by an in-memory wire, with a fake clock.

The core's unit tests and bench/bench_core.py drive the same wire.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from ipaddress import ip_address, ip_network

from gateway.endpoint import Endpoint
from gateway.wireguard.constants import INITIATION_SIZE, LABEL_MAC1, MESSAGE_INITIATION
from gateway.wireguard.crypto import hash_, mac, public_key
from gateway.wireguard.device import Datagram, Device
from gateway.wireguard.messages import INITIATION_MAC1_END
from testbed.tun_packets import checksum

A_ENDPOINT: Endpoint = ("192.0.2.1", 51820)
B_ENDPOINT: Endpoint = ("192.0.2.2", 51821)
A_INNER = "10.0.0.1"
B_INNER = "10.0.0.2"


def ipv4_packet(src: str, dst: str, payload: bytes = b"x" * 28, proto: int = 17) -> bytes:
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0, 0, 64, proto, 0,
        ip_address(src).packed, ip_address(dst).packed,
    )  # fmt: skip
    header = header[:10] + struct.pack("!H", checksum(header)) + header[12:]
    return header + payload


def ipv6_packet(src: str, dst: str, payload: bytes = b"y" * 24, proto: int = 17) -> bytes:
    return (
        struct.pack("!IHBB", 6 << 28, len(payload), proto, 64)
        + ip_address(src).packed
        + ip_address(dst).packed
        + payload
    )


@dataclass
class Wire:
    """Devices `a` and `b`; `pump` delivers each side's transmits to the other."""

    a: Device
    b: Device
    now: float = 1000.0
    delivered_to_a: list[Datagram] = field(default_factory=list)
    delivered_to_b: list[Datagram] = field(default_factory=list)
    lost: bool = False

    def pump(self, rounds: int = 10) -> int:
        """Move datagrams until quiet; returns how many moved."""
        moved = 0
        for _ in range(rounds):
            out_a, out_b = self.a.take_transmits(), self.b.take_transmits()
            if not out_a and not out_b:
                break
            if self.lost:
                continue
            for dst, data in out_a:
                if dst != B_ENDPOINT:
                    raise RuntimeError(f"A sent to {dst}, not to B")
                moved += 1
                inner = self.b.handle_datagram(data, A_ENDPOINT, self.now)
                if inner is not None:
                    self.delivered_to_b.append(inner)
            for dst, data in out_b:
                if dst != A_ENDPOINT:
                    raise RuntimeError(f"B sent to {dst}, not to A")
                moved += 1
                inner = self.a.handle_datagram(data, B_ENDPOINT, self.now)
                if inner is not None:
                    self.delivered_to_a.append(inner)
        return moved

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.a.tick(self.now)
        self.b.tick(self.now)

    def send_a_to_b(self, payload: bytes = b"x" * 28) -> Datagram | None:
        """A sends an IP packet to B; returns what B delivered (after pumping)."""
        self.delivered_to_b.clear()
        packet = ipv4_packet(A_INNER, B_INNER, payload)
        out = self.a.handle_packet(packet, self.now)
        if out is not None:
            inner = self.b.handle_datagram(out[1], A_ENDPOINT, self.now)
            if inner is not None:
                self.delivered_to_b.append(inner)
        self.pump()
        return self.delivered_to_b[-1] if self.delivered_to_b else None

    def send_b_to_a(self, payload: bytes = b"z" * 28) -> Datagram | None:
        self.delivered_to_a.clear()
        packet = ipv4_packet(B_INNER, A_INNER, payload)
        out = self.b.handle_packet(packet, self.now)
        if out is not None:
            inner = self.a.handle_datagram(out[1], B_ENDPOINT, self.now)
            if inner is not None:
                self.delivered_to_a.append(inner)
        self.pump()
        return self.delivered_to_a[-1] if self.delivered_to_a else None


def make_wire(
    *, psk: bytes | None = None, a_knows_b_endpoint: bool = True, b_knows_a_endpoint: bool = False,
    **device_kwargs: int,
) -> Wire:  # fmt: skip
    key_a, key_b = os.urandom(32), os.urandom(32)
    a, b = Device(key_a, **device_kwargs), Device(key_b, **device_kwargs)  # type: ignore[arg-type]  # test tunables
    now = 1000.0
    a.upsert_peer(
        public_key(key_b), preshared_key=psk, allowed_ips=[ip_network("10.0.0.2/32"),
        ip_network("fd00::2/128")], endpoint=B_ENDPOINT if a_knows_b_endpoint else None, now=now,
    )  # fmt: skip
    b.upsert_peer(
        public_key(key_a), preshared_key=psk, allowed_ips=[ip_network("10.0.0.1/32"),
        ip_network("fd00::1/128")], endpoint=A_ENDPOINT if b_knows_a_endpoint else None, now=now,
    )  # fmt: skip
    return Wire(a, b, now)


ICMP_ECHO_REQUEST_V4, ICMP_ECHO_REPLY_V4 = 8, 0
ICMP_ECHO_REQUEST_V6, ICMP_ECHO_REPLY_V6 = 128, 129


def icmp_echo(src: str, dst: str, *, reply: bool, ident: int, seq: int, payload: bytes) -> bytes:
    """An ICMP (v4) or ICMPv6 echo request/reply inside its IP packet, checksums filled in."""
    if ip_address(src).version == 4:
        kind = ICMP_ECHO_REPLY_V4 if reply else ICMP_ECHO_REQUEST_V4
        body = struct.pack("!BBHHH", kind, 0, 0, ident, seq) + payload
        body = body[:2] + struct.pack("!H", checksum(body)) + body[4:]
        return ipv4_packet(src, dst, body, proto=1)
    kind = ICMP_ECHO_REPLY_V6 if reply else ICMP_ECHO_REQUEST_V6
    body = struct.pack("!BBHHH", kind, 0, 0, ident, seq) + payload
    pseudo = ip_address(src).packed + ip_address(dst).packed + struct.pack("!I3xB", len(body), 58)
    body = body[:2] + struct.pack("!H", checksum(pseudo + body)) + body[4:]
    return ipv6_packet(src, dst, body, proto=58)


@dataclass
class Echo:
    src: str
    dst: str
    reply: bool
    ident: int
    seq: int
    payload: bytes


def parse_echo(packet: bytes) -> Echo | None:
    """The ICMP echo in an IP packet, or None if it is something else."""
    version = packet[0] >> 4
    if version == 4 and packet[9] == 1:
        src, dst, body = packet[12:16], packet[16:20], packet[20:]
        kinds = {ICMP_ECHO_REQUEST_V4: False, ICMP_ECHO_REPLY_V4: True}
    elif version == 6 and packet[6] == 58:
        src, dst, body = packet[8:24], packet[24:40], packet[40:]
        kinds = {ICMP_ECHO_REQUEST_V6: False, ICMP_ECHO_REPLY_V6: True}
    else:
        return None
    if len(body) < 8 or body[0] not in kinds:
        return None
    ident, seq = struct.unpack("!HH", body[4:8])
    return Echo(
        str(ip_address(src)), str(ip_address(dst)), kinds[body[0]], ident, seq, bytes(body[8:])
    )


def flood_initiation(gateway_public_key: bytes) -> bytes:
    """An initiation from nobody the gateway knows, with a valid mac1 and no mac2 (anyone who
    knows the gateway's public key can make these: what a handshake flood sends)."""
    msg = bytearray(os.urandom(INITIATION_SIZE))
    msg[:4] = struct.pack("<I", MESSAGE_INITIATION)
    mac1_key = hash_(LABEL_MAC1, gateway_public_key)
    msg[INITIATION_MAC1_END : INITIATION_MAC1_END + 16] = mac(
        mac1_key, bytes(msg[:INITIATION_MAC1_END])
    )
    msg[INITIATION_MAC1_END + 16 :] = bytes(16)
    return bytes(msg)
