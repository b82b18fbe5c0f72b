"""Scale in peers: firezone-gw with N configured but idle peers, one run.

    python -m bench.bench_scale [--peers 10000,100000] [--idle-seconds 10] [--duration 10]

For each N: start-up to /readyz, idle CPU per process (psutil, over --idle-seconds), RSS and
PSS per process, and the time and size of a /metrics scrape (median of 3), the gateway alone
in a namespace. Then TCP throughput through the gateway (one wireguard-go client, iperf3
upload, --repeats runs each) with 1 peer and with --throughput-peers idle peers besides the
client, alternating, in the same run. Idle peers have generated keys (the core's X25519) and
a /32 each in 172.16.0.0/12, which no traffic uses. Writes bench/results/scale-<time>.json
and prints markdown for docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import shlex
import signal
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

from gateway.keys import encode_key
from gateway.wireguard.crypto import public_key
from testbed.gateway_config import GatewayPeer
from testbed.gateways import BackendUnavailable, FirezoneGateway
from testbed.iperf import run_iperf
from testbed.netns import NetNS, hosts
from testbed.topology import topology

RESULTS_DIR = Path(__file__).parent / "results"
IDLE_NET = ipaddress.IPv4Network("172.16.0.0/12")
SCRAPES = 3


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def idle_peers(count: int) -> list[GatewayPeer]:
    """`count` peers with fresh keys, each allowed one address of IDLE_NET."""
    if count > IDLE_NET.num_addresses - 2:
        raise ValueError(f"at most {IDLE_NET.num_addresses - 2} idle peers")
    base = int(IDLE_NET.network_address) + 1
    return [
        GatewayPeer(
            encode_key(public_key(os.urandom(32))), [f"{ipaddress.IPv4Address(base + i)}/32"]
        )
        for i in range(count)
    ]


class CrowdedGateway(FirezoneGateway):
    """firezone-gw configured with `extra` idle peers besides the topology's own."""

    def __init__(self, extra: Sequence[GatewayPeer], workers: int = 2) -> None:
        super().__init__(workers)
        self.extra = list(extra)
        self.launched_at = 0.0

    def start(self, ns: NetNS, peers: Sequence[GatewayPeer]) -> None:
        self.write_config([*peers, *self.extra])
        self.launched_at = time.monotonic()
        self.launch(ns)


@dataclass
class ScaleResult:
    peers: int
    config_bytes: int = 0
    startup_seconds: float | None = None
    idle_cpu_percent: dict[str, float] = field(default_factory=dict)  # of one core
    rss_mb: dict[str, float] = field(default_factory=dict)
    pss_mb: dict[str, float] = field(default_factory=dict)
    scrape_seconds: float | None = None
    scrape_bytes: int | None = None
    error: str | None = None


def _roles(gateway: FirezoneGateway) -> dict[str, psutil.Process]:
    if gateway.proc is None:
        raise RuntimeError("gateway not started")
    roles = {"supervisor": psutil.Process(gateway.proc.pid)}
    for role, pid in gateway.role_pids().items():
        roles[role] = psutil.Process(pid)
    return roles


def _cpu(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


def measure_scale(count: int, peers: Sequence[GatewayPeer], idle_seconds: float) -> ScaleResult:
    result = ScaleResult(count)
    with hosts() as factory:
        ns = factory.add("fzsc")
        gateway = CrowdedGateway(peers[:count])
        try:
            gateway.start(ns, [])
            result.config_bytes = gateway.config_path.stat().st_size
            gateway.wait_ready(timeout=300)
            result.startup_seconds = time.monotonic() - gateway.launched_at
            progress(f"{count} peers: ready after {result.startup_seconds:.1f}s")
            time.sleep(3)  # let start-up work (the first stats copy) finish
            roles = _roles(gateway)
            before = {role: _cpu(p) for role, p in roles.items()}
            time.sleep(idle_seconds)
            for role, proc in roles.items():
                result.idle_cpu_percent[role] = 100 * (_cpu(proc) - before[role]) / idle_seconds
                with contextlib.suppress(psutil.AccessDenied):
                    memory = proc.memory_full_info()
                    result.rss_mb[role] = memory.rss / 1e6
                    result.pss_mb[role] = memory.pss / 1e6
            times, sizes = [], []
            for _ in range(SCRAPES):
                start = time.monotonic()
                text = gateway.metrics_text()
                times.append(time.monotonic() - start)
                sizes.append(len(text.encode()))
            result.scrape_seconds = statistics.median(times)
            result.scrape_bytes = max(sizes)
        except (BackendUnavailable, RuntimeError, OSError) as exc:
            result.error = str(exc)
            progress(f"{count} peers: {exc}")
        finally:
            gateway.close()
    return result


def tcp_throughput(extra: Sequence[GatewayPeer], duration: int) -> float:
    """Gbit/s of one iperf3 TCP upload through the gateway with `extra` idle peers."""
    with topology(CrowdedGateway(extra), clients=1, ready_timeout=120) as topo:
        (got,) = run_iperf(topo, [0], [], duration, udp=False)
        topo.wait_iperf_idle()
        return got.bits_per_second / 1e9


@dataclass
class Settings:
    peers: tuple[int, ...] = (10_000, 100_000)
    throughput_peers: int = 10_000
    idle_seconds: float = 10.0
    duration: int = 10
    repeats: int = 2


def parse_args(argv: Sequence[str]) -> Settings:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_scale", description=__doc__)
    parser.add_argument("--peers", default="10000,100000", help="idle peer counts to measure")
    parser.add_argument("--throughput-peers", type=int, default=10_000)
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    parser.add_argument("--duration", type=int, default=10, help="seconds per iperf3 run")
    parser.add_argument("--repeats", type=int, default=2, help="iperf3 runs per case")
    args = parser.parse_args(argv)
    try:
        counts = tuple(int(n) for n in args.peers.split(",") if n)
    except ValueError:
        parser.error(f"--peers wants a comma-separated list of integers, got {args.peers!r}")
    if args.idle_seconds <= 0 or args.duration < 1 or args.repeats < 0:
        parser.error("--idle-seconds and --duration must be positive, --repeats >= 0")
    return Settings(counts, args.throughput_peers, args.idle_seconds, args.duration, args.repeats)


def markdown(results: Sequence[ScaleResult], throughput: dict[str, list[float]]) -> str:
    roles = sorted({r for res in results for r in res.idle_cpu_percent}, key=_role_order)
    lines = [
        "| idle peers | config | start-up to ready | idle CPU, % of a core ("
        + ", ".join(roles)
        + ") | RSS MB (same order) | PSS MB, sum | /metrics scrape |",
        "| ---: | ---: | ---: | --- | --- | ---: | ---: |",
    ]
    for res in results:
        if res.error is not None:
            lines.append(f"| {res.peers:,} | failed: {res.error} | | | | | |")
            continue
        cpu = " / ".join(f"{res.idle_cpu_percent.get(r, 0):.2f}" for r in roles)
        rss = " / ".join(f"{res.rss_mb.get(r, 0):.0f}" for r in roles)
        lines.append(
            f"| {res.peers:,} | {res.config_bytes / 1e6:.1f} MB | {res.startup_seconds:.1f} s "
            f"| {cpu} | {rss} | {sum(res.pss_mb.values()):.0f} "
            f"| {res.scrape_seconds:.3f} s, {res.scrape_bytes or 0:,} bytes |"
        )
    if throughput:
        one, many = (statistics.median(v) if v else 0.0 for v in throughput.values())
        names = list(throughput)
        lines += [
            "",
            f"TCP upload, 1 stream (median of {len(throughput[names[0]])}): "
            f"{names[0]} {one:.2f} Gbit/s, {names[1]} {many:.2f} Gbit/s "
            f"({100 * many / one if one else 0:.0f}%).",
        ]
    return "\n".join(lines)


def _role_order(role: str) -> tuple[int, str]:
    order = {"supervisor": 0, "crypto": 2, "udp": 3}
    return order.get(role, 1), role


def main(argv: Sequence[str] | None = None) -> int:
    raw = list(sys.argv[1:] if argv is None else argv)
    settings = parse_args(raw)
    load_before = " ".join(f"{x:.1f}" for x in os.getloadavg())
    most = max([*settings.peers, settings.throughput_peers])
    progress(f"generating {most} peer keys")
    peers = idle_peers(most)
    throughput: dict[str, list[float]] = {}
    if settings.repeats:
        one, crowded = "1 peer", f"1 peer + {settings.throughput_peers:,} idle"
        throughput = {one: [], crowded: []}
        for run in range(settings.repeats):
            for name, extra in ((one, []), (crowded, peers[: settings.throughput_peers])):
                gbps = tcp_throughput(extra, settings.duration)
                progress(f"TCP {name}, run {run + 1}: {gbps:.2f} Gbit/s")
                throughput[name].append(gbps)
    results = [measure_scale(n, peers, settings.idle_seconds) for n in settings.peers]
    table = markdown(results, throughput)
    print(table)
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / f"scale-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(
        json.dumps(
            {
                "command": shlex.join(["python", "-m", "bench.bench_scale", *raw]),
                "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "load average before/after": f"{load_before} / "
                + " ".join(f"{x:.1f}" for x in os.getloadavg()),
                "settings": asdict(settings),
                "results": [asdict(r) for r in results],
                "tcp_gbps": throughput,
            },
            indent=2,
        )
        + "\n"
    )
    progress(f"wrote {path}")
    return 0 if all(r.error is None for r in results) else 1


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds every `finally`: namespaces and gateways go too


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    sys.exit(main())
