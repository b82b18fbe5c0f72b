"""Cost of a translated packet: ProxyHandler.from_peer (peer -> real host: grant, filters,
NAT table, rewrite) and to_peer (reply -> peer), for a TCP flow with 1200 bytes of payload to
an IPv4 proxy address, and the same through NAT64 (an IPv6 proxy for an IPv4-only name);
plus to_peer for a packet of no translated flow (NOT_MINE), which every packet toward a peer
pays once DNS resources exist.

python -m bench.bench_nat
"""

from __future__ import annotations

from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

from bench.micro import report, wall_us_per_call
from gateway.ipnet import parse_network
from gateway.nat.handler import ProxyHandler, Target, sources_by_key
from gateway.resources.filters import parse_filter
from gateway.resources.resource import Resource, parse_resource_address
from ippacket import IpPacket, build

COUNT = 50_000
REPEATS = 7
PAYLOAD = bytes(1200)
RESULTS = Path(__file__).parent / "results" / "nat.json"
PEER = b"P" * 32
CLIENT, PROXY = IPv4Address("100.64.0.2"), IPv4Address("100.96.0.1")
CLIENT6, PROXY6 = IPv6Address("fd00:64::2"), IPv6Address("fd00:2021:1111:8000::1")
REAL, OTHER = IPv4Address("10.98.0.5"), IPv4Address("10.98.0.6")


def us_per_call(loop: Callable[[int], None]) -> float:
    return wall_us_per_call(loop, COUNT, REPEATS)


def handler() -> ProxyHandler:
    resource = Resource(
        "app", parse_resource_address("app.corp.test"), (parse_filter("tcp", "443"),)
    )
    own = [parse_network(f"{CLIENT}/32"), parse_network(f"{CLIENT6}/128")]
    proxy = ProxyHandler(
        [resource],
        {PEER: frozenset({0})},
        lambda _packet: None,
        sources=sources_by_key([(PEER, own)]),
    )
    proxy.apply(PROXY, PROXY6, Target(0, (REAL,), ()))
    return proxy


def main() -> None:
    proxy = handler()
    outbound = bytearray(build.tcp_packet(CLIENT, PROXY, 40000, 443, PAYLOAD).data)
    reply = bytearray(build.tcp_packet(REAL, CLIENT, 443, 40000, PAYLOAD).data)
    other = bytearray(build.tcp_packet(OTHER, CLIENT, 443, 40001, PAYLOAD).data)
    outbound6 = bytearray(build.tcp_packet(CLIENT6, PROXY6, 40002, 443, PAYLOAD).data)
    reply6 = bytearray(build.tcp_packet(REAL, CLIENT, 443, 40002, PAYLOAD).data)

    def from_peer(n: int) -> None:
        for i in range(n):
            proxy.from_peer(PEER, IpPacket(outbound), float(i))

    def to_peer(n: int) -> None:
        for i in range(n):
            proxy.to_peer(IpPacket(memoryview(reply)), float(i))

    def not_mine(n: int) -> None:
        for i in range(n):
            proxy.to_peer(IpPacket(memoryview(other)), float(i))

    def from_peer64(n: int) -> None:
        for i in range(n):
            proxy.from_peer(PEER, IpPacket(outbound6), float(i))

    def to_peer64(n: int) -> None:
        for i in range(n):
            proxy.to_peer(IpPacket(memoryview(reply6)), float(i))

    rows = {
        "from_peer_ipv4_tcp_us": us_per_call(from_peer),
        "to_peer_ipv4_tcp_us": us_per_call(to_peer),
        "to_peer_not_mine_us": us_per_call(not_mine),
        "from_peer_nat64_tcp_us": us_per_call(from_peer64),
        "to_peer_nat64_tcp_us": us_per_call(to_peer64),
    }
    report(rows, RESULTS, COUNT, REPEATS)


if __name__ == "__main__":
    main()
