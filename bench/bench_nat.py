"""Cost of a translated packet: ProxyHandler.from_peer (peer -> real host: grant, filters,
NAT table, rewrite) and to_peer (reply -> peer), for a TCP flow with 1200 bytes of payload to
an IPv4 proxy address, and the same through NAT64 (an IPv6 proxy for an IPv4-only name);
plus to_peer for a packet of no translated flow (NOT_MINE), which every packet toward a peer
pays once DNS resources exist. And what a new flow costs (a NAT entry made, its outside port
chosen): a UDP flow from a new source port, and a NAT64 flow whose port is already taken
toward the same host because the peer sprayed its IPv4 proxy first (issue 19: the port search
was a scan, up to 65,535 tries a flow).

python -m bench.bench_nat
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from time import process_time_ns

from bench.micro import report, wall_us_per_call
from gateway.ipnet import parse_network
from gateway.nat.handler import ProxyHandler, Target, sources_by_key
from gateway.nat.table import IPPROTO_UDP, Outside
from gateway.resources.filters import parse_filter
from gateway.resources.resource import Resource, parse_resource_address
from ippacket import IpPacket, build

COUNT = 50_000
REPEATS = 7
NEW_FLOWS = 5_000  # per timed run, into an empty table (or one at the peer's quota)
QUOTA_FLOWS = 8_192  # the default peer quota: unanswered flows made before the timed ones
SPRAY = 60_000  # IPv4 flows the peer makes first, from source ports 1..SPRAY
COLLIDING = 100  # NAT64 flows timed per run after the spray, each from a taken port
COLLIDING_REPEATS = 3
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
        "app",
        parse_resource_address("app.corp.test"),
        (parse_filter("tcp", "443"), parse_filter("udp", "53")),
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


def timed_us(calls: list[tuple[bytes, bytearray]], proxy: ProxyHandler) -> float:
    """CPU µs of this process per `from_peer` of each (peer, packet), parse included (CPU
    time: on the shared VM other processes' load moves wall-clock figures by 2x)."""
    start = process_time_ns()
    for i, (peer, packet) in enumerate(calls):
        proxy.from_peer(peer, IpPacket(packet), float(i) * 1e-4)
    return (process_time_ns() - start) / len(calls) / 1000


def udp_to(
    source: IPv4Address | IPv6Address, proxy: IPv4Address | IPv6Address, port: int
) -> bytearray:
    return bytearray(build.udp_packet(source, proxy, port, 53, b"x" * 32).data)


def new_flow_us() -> float:
    """A UDP flow from a new source port each, into an empty table."""
    calls = [(PEER, udp_to(CLIENT, PROXY, 1024 + i)) for i in range(NEW_FLOWS)]
    return statistics.median(timed_us(calls, handler()) for _ in range(REPEATS))


def evicting_new_flow_us() -> float:
    """A UDP flow from a new source port each, once the peer has its quota of unanswered
    flows (each new one now evicts the peer's oldest; before the quota, a plain new flow)."""
    samples = []
    for _ in range(REPEATS):
        proxy = handler()
        timed_us([(PEER, udp_to(CLIENT, PROXY, 1024 + i)) for i in range(QUOTA_FLOWS)], proxy)
        calls = [(PEER, udp_to(CLIENT, PROXY, 20_000 + i)) for i in range(NEW_FLOWS)]
        samples.append(timed_us(calls, proxy))
    return statistics.median(samples)


def colliding_new_flow_us() -> float:
    """A NAT64 flow after the peer's IPv4 spray: its source port is taken toward the host
    (both reach it from the peer's IPv4 address), so another port must be found."""
    proxy = handler()
    timed_us([(PEER, udp_to(CLIENT, PROXY, port)) for port in range(1, SPRAY + 1)], proxy)
    taken = [
        port
        for port in range(1, SPRAY + 1)
        if proxy.table.find(Outside(IPPROTO_UDP, REAL, 53, CLIENT, port)) is not None
    ]
    samples = []
    for run in range(COLLIDING_REPEATS):
        ports = taken[run * COLLIDING : (run + 1) * COLLIDING]
        samples.append(timed_us([(PEER, udp_to(CLIENT6, PROXY6, p)) for p in ports], proxy))
    return statistics.median(samples)


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
        "new_flow_udp_us": new_flow_us(),
        "new_flow_udp_beyond_quota_us": evicting_new_flow_us(),
        "new_flow_nat64_port_taken_us": colliding_new_flow_us(),
    }
    report(rows, RESULTS, COUNT, REPEATS)


if __name__ == "__main__":
    main()
