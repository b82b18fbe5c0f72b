"""RFC 7915 translation cost per packet (gateway/nat/translate.py): a 1280-byte TCP segment
IPv6 -> IPv4 and IPv4 -> IPv6 (the packet already parsed, as the NAT lookup before it needs),
parse + translate together, and an ICMPv4 error (fragmentation needed quoting 548 bytes)
translated to ICMPv6, whose checksum is computed in full.

python -m bench.bench_translate
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

from gateway.nat.translate import ipv4_to_ipv6, ipv6_to_ipv4
from ippacket import IpPacket, build
from ippacket.icmp_errors import packet_too_big

COUNT = 50_000
REPEATS = 7
SIZE = 1280  # whole IP packet, as the tunnel MTU allows
RESULTS = Path(__file__).parent / "results" / "translate.json"
PEER6, PROXY6 = IPv6Address("fd00:2021:1111::2"), IPv6Address("fd00:2021:1111:8000::9")
GATEWAY4, REAL4 = IPv4Address("192.0.2.1"), IPv4Address("198.51.100.9")


def us_per_call(loops: dict[str, Callable[[int], None]]) -> dict[str, float]:
    """Median CPU time of this process per call, the cases interleaved in each repeat: on
    the shared cores, wall time mostly measured how often other work preempted the loop,
    and interleaving spreads the rest of the noise over every case alike."""
    samples: dict[str, list[float]] = {name: [] for name in loops}
    for _ in range(REPEATS):
        for name, loop in loops.items():
            start = time.process_time_ns()
            loop(COUNT)
            samples[name].append((time.process_time_ns() - start) / COUNT / 1000)
    return {name: statistics.median(values) for name, values in samples.items()}


def translate_v6(buf: bytearray, *, parse: bool) -> Callable[[int], None]:
    packet = IpPacket(buf)
    slot = memoryview(buf)

    def loop(n: int) -> None:
        for _ in range(n):
            ipv6_to_ipv4(IpPacket(slot) if parse else packet, GATEWAY4, REAL4)

    return loop


def translate_v4(buf: bytearray, *, parse: bool) -> Callable[[int], None]:
    packet = IpPacket(buf)
    slot = memoryview(buf)

    def loop(n: int) -> None:
        for _ in range(n):
            ipv4_to_ipv6(IpPacket(slot) if parse else packet, PROXY6, PEER6)

    return loop


def main() -> None:
    v6 = build.tcp_packet(PEER6, PROXY6, 40000, 443, bytes(SIZE - 60))
    v4 = build.tcp_packet(REAL4, GATEWAY4, 443, 40000, bytes(SIZE - 40))
    sent4 = build.tcp_packet(GATEWAY4, REAL4, 40000, 443, bytes(SIZE - 40))
    error4 = packet_too_big(sent4, 1200, source=IPv4Address("203.0.113.1"))
    assert len(v6) == len(v4) == SIZE
    v6_buf, v4_buf, error_buf = bytearray(v6.data), bytearray(v4.data), bytearray(error4.data)
    rows = us_per_call(
        {
            "ipv6_to_ipv4_tcp_us": translate_v6(v6_buf, parse=False),
            "ipv4_to_ipv6_tcp_us": translate_v4(v4_buf, parse=False),
            "parse_and_ipv6_to_ipv4_tcp_us": translate_v6(v6_buf, parse=True),
            "parse_and_ipv4_to_ipv6_tcp_us": translate_v4(v4_buf, parse=True),
            "icmpv4_error_to_icmpv6_us": translate_v4(error_buf, parse=False),
        }
    )
    for name, value in rows.items():
        print(f"{name:30} {value:6.2f} us")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"count": COUNT, "repeats": REPEATS, "median": rows}, indent=2))


if __name__ == "__main__":
    main()
