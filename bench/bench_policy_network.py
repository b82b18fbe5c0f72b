"""TCP throughput through firezone-gw with the policy on and off, in the same run.

    python -m bench.bench_policy_network [--duration 5] [--repeats 2] [--workers 2]

The gateway has 1,000 peers (the topology's wireguard-go client and 999 more that never
connect) and, with the policy on, 100 resources with each peer granted 10; the client's
grants include the resource network with the iperf3 servers (TCP 5201-5208). One gateway
process serves both modes: a SIGHUP switches between the two config files, so both run on
the same session, alternating off/on `--repeats` times. Figures are medians of the repeats;
the ratio is on/off. On a shared machine throughput mostly measures the neighbours, so each
run also records the crypto process's CPU time per MB carried (CPU time is not taken by
other processes' turns on the CPU). Writes bench/results/policy-network.json.
"""

from __future__ import annotations

import argparse
import functools
import json
import random
import signal
import statistics
from collections.abc import Sequence
from pathlib import Path

import psutil

from gateway.keys import encode_key, generate_private_key, public_key
from testbed.addresses import GATEWAY_TUNNEL_ADDR, RESOURCE_NET, client_specs
from testbed.gateway_config import GatewayPeer
from testbed.gateways import FirezoneGateway
from testbed.iperf import run_iperf
from testbed.netns import wait_for
from testbed.topology import Topology

PEERS = 1000
RESOURCES = 100
GRANTS_PER_PEER = 10
GB = 1e9
RESULTS = Path(__file__).parent / "results" / "policy-network.json"


def resources_toml() -> str:
    """r0: the iperf3 servers' network (TCP 5201-5208 and ICMP); r1..r99: 172.16.i.0/24."""
    text = (
        f'\n[[resources]]\nname = "r0"\naddress = "{RESOURCE_NET}"\n'
        'filters = [{ protocol = "tcp", ports = "5201-5208" }, { protocol = "icmp" }]\n'
    )
    for i in range(1, RESOURCES):
        text += f'\n[[resources]]\nname = "r{i}"\naddress = "172.16.{i}.0/24"\n'
        if i % 2:
            text += 'filters = [{ protocol = "tcp", ports = "443" }]\n'
    return text


@functools.cache
def other_keys() -> list[str]:
    """The 999 peers that never connect (the same in both configs)."""
    return [encode_key(public_key(generate_private_key())) for _ in range(PEERS - 1)]


def peers(topo: Topology[FirezoneGateway], *, policy: bool) -> list[GatewayPeer]:
    rng = random.Random(1)
    others = [f"r{i}" for i in range(1, RESOURCES)]
    spec = topo.client_specs[0]
    found = [
        GatewayPeer(
            spec.public_key,
            spec.allowed_ips,
            resources=["r0", *rng.sample(others, GRANTS_PER_PEER - 1)] if policy else None,
        )
    ]
    for i, key in enumerate(other_keys(), start=1):
        grants = rng.sample(["r0", *others], GRANTS_PER_PEER) if policy else None
        found.append(GatewayPeer(key, [f"100.100.{i // 250}.{i % 250 + 2}/32"], resources=grants))
    return found


def apply(topo: Topology[FirezoneGateway], *, policy: bool) -> None:
    backend = topo.backend
    reloads = backend.log_text().count("reload:")
    backend.write_config(peers(topo, policy=policy), extra_toml=resources_toml() if policy else "")
    backend.signal(signal.SIGHUP)
    wait_for(lambda: backend.log_text().count("reload:") > reloads, timeout=30)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_policy_network")
    parser.add_argument("--duration", type=int, default=5, help="seconds per iperf3 run")
    parser.add_argument("--repeats", type=int, default=2, help="off/on rounds")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    figures: dict[str, dict[str, list[float]]] = {
        mode: {"upload": [], "download": []} for mode in ("off", "on")
    }
    cpu: dict[str, dict[str, list[float]]] = {
        mode: {"upload": [], "download": []} for mode in ("off", "on")
    }
    topo = Topology(FirezoneGateway(workers=args.workers), client_specs(1))
    try:
        topo.backend.write_config(peers(topo, policy=False))
        topo.backend.launch(topo.gateway_ns)
        topo.backend.wait_ready(timeout=60)
        topo.connect_client(0)
        topo.wait_ping(0, dest=GATEWAY_TUNNEL_ADDR, timeout=30)
        topo.start_iperf_servers()
        for _ in range(args.repeats):
            for mode in ("off", "on"):
                apply(topo, policy=mode == "on")
                for direction, extra in (("upload", []), ("download", ["-R"])):
                    topo.wait_iperf_idle()
                    crypto = psutil.Process(topo.backend.role_pids()["crypto"])
                    before = sum(crypto.cpu_times()[:2])
                    (result,) = run_iperf(topo, [0], extra, args.duration, udp=False)
                    spent = sum(crypto.cpu_times()[:2]) - before
                    figures[mode][direction].append(result.bits_per_second / GB)
                    cpu[mode][direction].append(spent * 1e6 / (result.bytes / 1e6))
    finally:
        topo.close()
    medians = {
        mode: {d: statistics.median(v) for d, v in by_direction.items()}
        for mode, by_direction in figures.items()
    }
    cpu_medians = {
        mode: {d: statistics.median(v) for d, v in by_direction.items()}
        for mode, by_direction in cpu.items()
    }
    print(f"{'TCP, 1 stream':16} {'policy off':>12} {'policy on':>12} {'on/off':>8}")
    for direction in ("upload", "download"):
        off, on = medians["off"][direction], medians["on"][direction]
        print(f"{direction:16} {off:9.3f} Gb {on:9.3f} Gb {on / off:8.2f}")
    print(f"{'crypto CPU':16} {'us/MB off':>12} {'us/MB on':>12} {'on/off':>8}")
    for direction in ("upload", "download"):
        off, on = cpu_medians["off"][direction], cpu_medians["on"][direction]
        print(f"{direction:16} {off:12.0f} {on:12.0f} {on / off:8.2f}")
    RESULTS.parent.mkdir(exist_ok=True)
    document = {
        "peers": PEERS,
        "resources": RESOURCES,
        "grants_per_peer": GRANTS_PER_PEER,
        "duration": args.duration,
        "workers": args.workers,
        "gbit_per_second": figures,
        "median": medians,
        "crypto_cpu_us_per_mb": cpu,
        "crypto_cpu_median": cpu_medians,
    }
    RESULTS.write_text(json.dumps(document, indent=2))


if __name__ == "__main__":
    main()
