"""The policy's cost per packet in the crypto process: 100 resources, 1,000 peers each granted
10 of them (the issue's case). Measures what the crypto loop adds per inner packet when a
policy is configured:

* `Firewall.from_peer` of a granted TCP packet of a known flow (the flow cache: no parse),
  of a new flow each time (parse + cached decision + counting), of a
  denied one answered with an ICMP error (built every time: the worst case), and of a denied
  one once the peer's ICMP rate limit is spent (a flood of denied packets);
* `Firewall.to_peer` of a granted answer, known flow and new flow each time (+ the lookup
  of the peer the destination routes to);
* `Policy.inbound` alone, cached and uncached (the decision without the packet);
* the peer lookup of a packet of a new flow (`Device.peer_key_for`, through the allowed-IPs
  cache; a known flow needs none).

Packets carry 1200 bytes of payload. python -m bench.bench_policy
"""

from __future__ import annotations

import ipaddress
import json
import random
import statistics
import time
from collections.abc import Callable, Hashable
from ipaddress import IPv4Address
from pathlib import Path

from gateway.dataplane.firewall import Firewall
from gateway.keys import generate_private_key, public_key
from gateway.policy import IcmpErrorLimiter, Policy
from gateway.resources.filters import Filter, PortRange, Protocol
from gateway.resources.resource import Resource
from gateway.wireguard.device import Device
from ippacket import build

COUNT = 100_000
REPEATS = 7
RESOURCES = 100
PEERS = 1000
GRANTS_PER_PEER = 10
PAYLOAD = bytes(1200)
RESULTS = Path(__file__).parent / "results" / "policy.json"


def us_per_call(loop: Callable[[int], None]) -> tuple[float, float]:
    """(best, median) of the repeats, in CPU time of this process (on a shared machine,
    wall time would count the neighbours' turns on the CPU too)."""
    samples = []
    for _ in range(REPEATS):
        start = time.process_time_ns()
        loop(COUNT)
        samples.append((time.process_time_ns() - start) / COUNT / 1000)
    return min(samples), statistics.median(samples)


def resources() -> list[Resource]:
    """r0 = 10.98.0.0/24 (TCP 5432 only), r1..r99 = 172.16.i.0/24 with mixed filters."""
    found = [
        Resource(
            "r0",
            ipaddress.ip_network("10.98.0.0/24"),
            (Filter(Protocol.TCP, PortRange(5432, 5432)),),
        )
    ]
    for i in range(1, RESOURCES):
        filters: tuple[Filter, ...] = ()
        if i % 3 == 1:
            filters = (Filter(Protocol.TCP, PortRange(443, 443)), Filter(Protocol.ICMP))
        elif i % 3 == 2:
            filters = (Filter(Protocol.UDP, PortRange(5000, 5010)),)
        found.append(Resource(f"r{i}", ipaddress.ip_network(f"172.16.{i}.0/24"), filters))
    return found


def setup() -> tuple[Firewall, Device, bytes]:
    """The firewall of a gateway with PEERS peers; returns it, the Device, and the measured
    peer's key (granted r0 and 9 others, like everyone)."""
    rng = random.Random(1)
    device = Device(generate_private_key())
    grants: dict[Hashable, list[str]] = {}
    now = 0.0
    for i in range(PEERS):
        key = public_key(generate_private_key())
        address = ipaddress.ip_network(f"100.64.{i // 250}.{i % 250 + 2}/32")
        device.upsert_peer(key, allowed_ips=[address], now=now)
        names = rng.sample([f"r{n}" for n in range(1, RESOURCES)], GRANTS_PER_PEER - 1)
        grants[key] = ["r0", *names]
    policy = Policy(resources(), grants, own_addresses=[IPv4Address("100.64.0.1")])
    measured = device.peer_key_for(IPv4Address("100.64.0.2").packed)
    assert measured is not None
    # The limiter is generous here so the denied case keeps building errors (the worst case).
    return Firewall(policy, device), device, measured


def main() -> None:
    firewall, device, peer = setup()
    client, db = IPv4Address("100.64.0.2"), IPv4Address("10.98.0.5")
    granted = bytearray(build.tcp_packet(client, db, 40000, 5432, PAYLOAD).data)
    denied = bytearray(build.tcp_packet(client, db, 40000, 22, PAYLOAD).data)
    answer = memoryview(bytearray(build.tcp_packet(db, client, 5432, 40000, PAYLOAD).data))
    policy = firewall.policy
    destination = db.packed
    # The same policy, with a limiter that never runs out: every denied packet gets an error.
    answering = Firewall(policy, device, IcmpErrorLimiter(1e12, 1e-12))

    def from_peer(packet: bytearray, wall: Firewall = firewall) -> Callable[[int], None]:
        def loop(n: int) -> None:
            for _ in range(n):
                wall.from_peer(packet, 0.0)
            wall.take_replies()

        return loop

    def new_flows(packet: bytearray) -> Callable[[int], None]:
        """A new TCP source port every packet: 65,536 flows cycle through a cache of
        FLOW_CACHE_MAX, so every packet takes the full path."""

        def loop(n: int) -> None:
            for i in range(n):
                packet[20], packet[21] = (i >> 8) & 0xFF, i & 0xFF
                firewall.from_peer(packet, 0.0)

        return loop

    def to_peer(n: int) -> None:
        for _ in range(n):
            firewall.to_peer(answer, 0.0)

    def to_peer_new_flows(n: int) -> None:
        for i in range(n):
            answer[22], answer[23] = (i >> 8) & 0xFF, i & 0xFF  # the client's port
            firewall.to_peer(answer, 0.0)

    def cached(n: int) -> None:
        for _ in range(n):
            policy.inbound(peer, destination, 6, 5432)

    def uncached(n: int) -> None:
        decide = policy._inbound
        for _ in range(n):
            decide(peer, destination, 6, 5432)

    def lookup(n: int) -> None:
        source = granted[12:16]
        for _ in range(n):
            device.peer_key_for(source)

    rows = {
        "from_peer_known_flow_us": us_per_call(from_peer(granted)),
        "from_peer_new_flow_us": us_per_call(new_flows(bytearray(granted))),
        "from_peer_denied_with_icmp_us": us_per_call(from_peer(denied, answering)),
        "from_peer_denied_rate_limited_us": us_per_call(from_peer(denied)),
        "to_peer_known_flow_us": us_per_call(to_peer),
        "to_peer_new_flow_us": us_per_call(to_peer_new_flows),
        "policy_inbound_cached_us": us_per_call(cached),
        "policy_inbound_uncached_us": us_per_call(uncached),
        "peer_lookup_us": us_per_call(lookup),
    }
    print(f"{'case':34} {'best':>8} {'median':>8}")
    for name, (best, median) in rows.items():
        print(f"{name:34} {best:6.2f}us {median:6.2f}us")
    RESULTS.parent.mkdir(exist_ok=True)
    document = {
        "count": COUNT,
        "repeats": REPEATS,
        "resources": RESOURCES,
        "peers": PEERS,
        "grants_per_peer": GRANTS_PER_PEER,
        "best": {name: best for name, (best, _) in rows.items()},
        "median": {name: median for name, (_, median) in rows.items()},
    }
    RESULTS.write_text(json.dumps(document, indent=2))


if __name__ == "__main__":
    main()
