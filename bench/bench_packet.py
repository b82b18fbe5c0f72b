"""ippacket cost per packet: parse (IPv4 TCP, IPv6 UDP), read the 5-tuple, and rewrite the
destination address + port with incremental checksum updates (what a NAT does per packet),
against recomputing the checksums from scratch. Packets carry 1200 bytes of payload.

python -m bench.bench_packet
"""

from __future__ import annotations

from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

from bench.micro import report, wall_us_per_call
from ippacket import IpAddress, IpPacket, build

COUNT = 100_000
REPEATS = 7
PAYLOAD = bytes(1200)  # a full-size packet: rewrites must not cost more for a longer payload
RESULTS = Path(__file__).parent / "results" / "packet.json"


def us_per_call(loop: Callable[[int], None]) -> float:
    return wall_us_per_call(loop, COUNT, REPEATS)


def parse(buf: bytearray) -> Callable[[int], None]:
    slot = memoryview(buf)  # as a ring slot arrives

    def loop(n: int) -> None:
        for _ in range(n):
            IpPacket(slot)

    return loop


def five_tuple(buf: bytearray) -> Callable[[int], None]:
    packet = IpPacket(buf)

    def loop(n: int) -> None:
        for _ in range(n):
            _ = (packet.source, packet.destination, packet.protocol)
            _ = (packet.source_port, packet.destination_port)

    return loop


def rewrite(buf: bytearray, addresses: tuple[IpAddress, IpAddress]) -> Callable[[int], None]:
    packet = IpPacket(buf)
    first, second = addresses

    def loop(n: int) -> None:
        for i in range(n):  # alternate, so every call really changes the bytes
            if i & 1:
                packet.set_destination(first)
                packet.set_destination_port(8080)
            else:
                packet.set_destination(second)
                packet.set_destination_port(443)

    return loop


def recompute(buf: bytearray) -> Callable[[int], None]:
    """The alternative to incremental updates: re-sum the whole packet."""
    packet = IpPacket(buf)

    def loop(n: int) -> None:
        for _ in range(n):
            packet.recompute_checksums()

    return loop


def main() -> None:
    v4 = build.tcp_packet(IPv4Address("100.64.0.2"), IPv4Address("10.0.0.9"), 40000, 443, PAYLOAD)
    v6 = build.udp_packet(IPv6Address("fd00::2"), IPv6Address("2001:db8::9"), 40000, 53, PAYLOAD)
    v4_buf, v6_buf = bytearray(v4.data), bytearray(v6.data)
    rows = {
        "parse_ipv4_tcp_us": us_per_call(parse(v4_buf)),
        "parse_ipv6_udp_us": us_per_call(parse(v6_buf)),
        "five_tuple_ipv4_tcp_us": us_per_call(five_tuple(v4_buf)),
        "five_tuple_ipv6_udp_us": us_per_call(five_tuple(v6_buf)),
        "rewrite_ipv4_tcp_us": us_per_call(
            rewrite(v4_buf, (IPv4Address("10.0.0.10"), IPv4Address("10.0.0.9")))
        ),
        "rewrite_ipv6_udp_us": us_per_call(
            rewrite(v6_buf, (IPv6Address("2001:db8::10"), IPv6Address("2001:db8::9")))
        ),
        "recompute_ipv4_tcp_us": us_per_call(recompute(v4_buf)),
    }
    report(rows, RESULTS, COUNT, REPEATS)


if __name__ == "__main__":
    main()
