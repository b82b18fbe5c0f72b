"""Idle latency and idle CPU of the gateway: ping p50/p99 with no other traffic, then each
process's CPU over a quiet interval (psutil), in one topology (three namespaces, one client).

    python -m bench.bench_latency [--wireguard-go PATH] [--ping-seconds 8] [--idle-seconds 10]

Prints one line per figure; nothing is written to docs/ (it is a probe for A/B comparisons
of the wake-up path, e.g. the Sleeper's spin).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

import psutil

from bench.bench_network import add_wireguard_go_option, load_average
from bench.bench_profile import backend_pids
from bench.probes import ping_result, rtt_summary, start_ping
from testbed.gateways import FirezoneGateway
from testbed.topology import topology


def idle_cpu(pids: dict[str, int], seconds: float) -> dict[str, float]:
    """Percent of one core each process used over `seconds` with no traffic."""
    procs = {name: psutil.Process(pid) for name, pid in pids.items()}
    before = {name: p.cpu_times() for name, p in procs.items()}
    time.sleep(seconds)
    after = {name: p.cpu_times() for name, p in procs.items()}
    return {
        name: 100
        * ((after[name].user + after[name].system) - (before[name].user + before[name].system))
        / seconds
        for name in procs
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_latency", description=__doc__)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--ping-seconds", type=float, default=8.0)
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    add_wireguard_go_option(parser)
    args = parser.parse_args(argv)
    print(f"load average {load_average()}")
    with topology(FirezoneGateway(args.workers), wireguard_go=args.wireguard_go) as topo:
        rtts = ping_result(start_ping(topo, args.ping_seconds), timeout=args.ping_seconds + 30)
        print(f"idle {rtt_summary(rtts)}")
        time.sleep(2)  # let the last packets' spins and timers settle
        cpu = idle_cpu(backend_pids(topo.backend), args.idle_seconds)
        print("idle CPU % of a core: " + ", ".join(f"{k} {v:.2f}" for k, v in cpu.items()))
    print(f"load average {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
