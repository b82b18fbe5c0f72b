"""Network benchmark: firezone-gw --workers N against wireguard-go as the gateway, one run.

    python -m bench.bench_network [--duration 10] [--repeats 3] [--workers 1,2,4]
                                  [--wireguard-go PATH]

Every figure is the median of `--repeats` runs; ratios are against wireguard-go measured in
the same run. `--wireguard-go` is the binary for the clients and the reference gateway
(default Debian's /usr/bin/wireguard-go). A firezone-gw that cannot start is reported as
such, and the baseline still runs. Writes bench/results/network-<time>.json and updates the
section of docs/BENCHMARKS.md for that wireguard-go version.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import platform
import re
import shlex
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from bench import report
from bench.report import BackendResult, Metric
from testbed.addresses import RESOURCE_ADDR
from testbed.gateways import (
    DEFAULT_FIREZONE_CMD,
    FIREZONE_CMD_ENV,
    BackendUnavailable,
    FirezoneGateway,
    GatewayBackend,
    WireGuardGoGateway,
)
from testbed.iperf import run_iperf
from testbed.topology import Topology, tool_version, topology
from testbed.wgpeer import DEFAULT_WIREGUARD_GO, wireguard_go_binary

RESULTS_DIR = Path(__file__).parent / "results"
BASELINE = "wireguard-go"
GB = 1e9
_PING_TIME = re.compile(r"time=([\d.]+) ms")


METRICS = [
    Metric("tcp_up_1", "TCP upload, 1 stream", "Gbit/s", True),
    Metric("tcp_down_1", "TCP download, 1 stream", "Gbit/s", True),
    Metric("tcp_up_4", "TCP upload, 4 streams", "Gbit/s", True),
    Metric("tcp_down_4", "TCP download, 4 streams", "Gbit/s", True),
    Metric("tcp_up_2c", "TCP upload, 2 clients", "Gbit/s", True),
    Metric("tcp_down_2c", "TCP download, 2 clients", "Gbit/s", True),
    Metric("udp_max_rate", "UDP delivered, unlimited offer", "Gbit/s", True),
    Metric("udp_max_loss", "UDP loss, unlimited offer", "%", False),
    Metric("udp_fixed_rate", "UDP delivered, fixed offer", "Gbit/s", True),
    Metric("udp_fixed_loss", "UDP loss, fixed offer", "%", False),
    Metric("ping_p50", "ping RTT p50", "ms", False),
    Metric("ping_p99", "ping RTT p99", "ms", False),
    Metric("cpu_per_gb", "gateway CPU per GB (TCP)", "CPU s/GB", False),
    Metric("idle_cpu", "gateway idle CPU", "% of a core", False),
    Metric("rss", "gateway RSS, all processes", "MB", False),
    # Summed RSS counts pages that forked children share with the supervisor once per
    # process; PSS splits shared pages among their users, so its sum is the real total.
    Metric("pss", "gateway PSS, all processes", "MB", False),
]


@dataclass
class Settings:
    duration: int = 10
    repeats: int = 3
    workers: tuple[int, ...] = (1, 2, 4)
    udp_rate: str = "300M"
    udp_length: int = 1200
    ping_count: int = 200
    ping_interval: float = 0.01
    idle_seconds: float = 10.0
    skip_firezone: bool = False
    gw_cmd: str = ""
    wireguard_go: str = DEFAULT_WIREGUARD_GO  # clients and the reference gateway


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- what the gateway costs (psutil over all its processes) ---------------------------


def cpu_seconds(pids: Sequence[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = psutil.Process(pid).cpu_times()
            total += times.user + times.system
    return total


def rss_bytes(pids: Sequence[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += psutil.Process(pid).memory_info().rss
    return total


def pss_bytes(pids: Sequence[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            total += psutil.Process(pid).memory_full_info().pss
    return total


@contextlib.contextmanager
def gateway_cpu(backend: GatewayBackend) -> Iterator[list[float]]:
    """Yields a list that holds the gateway's CPU seconds spent inside the block."""
    pids = backend.pids()
    before = cpu_seconds(pids)
    spent: list[float] = []
    yield spent
    spent.append(cpu_seconds(pids) - before)


# --- traffic --------------------------------------------------------------------------


def ping_rtts(topo: Topology[GatewayBackend], count: int, interval: float) -> list[float]:
    argv = topo.client_ns(0).exec_argv(
        "ping", "-c", str(count), "-i", str(interval), "-W", "1", RESOURCE_ADDR
    )
    out = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=count + 30)
    return [float(m) for m in _PING_TIME.findall(out.stdout)]


def percentile(values: Sequence[float], pct: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[pct - 1]


# --- one backend ------------------------------------------------------------------------

TCP_CASES = [
    ("tcp_up_1", [0], []),
    ("tcp_down_1", [0], ["-R"]),
    ("tcp_up_4", [0], ["-P", "4"]),
    ("tcp_down_4", [0], ["-R", "-P", "4"]),
    ("tcp_up_2c", [0, 1], []),
    ("tcp_down_2c", [0, 1], ["-R"]),
]


def measure(topo: Topology[GatewayBackend], settings: Settings, result: BackendResult) -> None:
    backend = topo.backend
    with gateway_cpu(backend) as idle:
        time.sleep(settings.idle_seconds)
    result.add("idle_cpu", 100 * idle[0] / settings.idle_seconds)

    for rep in range(settings.repeats):
        rtts = ping_rtts(topo, settings.ping_count, settings.ping_interval)
        if len(rtts) >= 2:
            result.add("ping_p50", statistics.median(rtts))
            result.add("ping_p99", percentile(rtts, 99))
        progress(f"{result.backend}: ping {rep + 1}/{settings.repeats}: {len(rtts)} replies")

    for rep in range(settings.repeats):
        for key, clients, args in TCP_CASES:
            topo.wait_iperf_idle()
            with gateway_cpu(backend) as cpu:
                runs = run_iperf(topo, clients, args, settings.duration, udp=False)
            gbits = sum(r.bits_per_second for r in runs) / 1e9
            moved = sum(r.bytes for r in runs)
            result.add(key, gbits)
            if moved:
                result.add("cpu_per_gb", cpu[0] / (moved / GB))
            progress(f"{result.backend}: {key} {rep + 1}/{settings.repeats}: {gbits:.3f} Gbit/s")
        for case, rate in (("udp_max", "0"), ("udp_fixed", settings.udp_rate)):
            udp_args = ["-u", "-b", rate, "-l", str(settings.udp_length)]
            topo.wait_iperf_idle()
            (udp,) = run_iperf(topo, [0], udp_args, settings.duration, udp=True)
            result.add(f"{case}_rate", udp.bits_per_second / 1e9)
            result.add(f"{case}_loss", udp.lost_percent)
            progress(
                f"{result.backend}: {case} (-b {rate}) {rep + 1}/{settings.repeats}: "
                f"{udp.bits_per_second / 1e9:.3f} Gbit/s, {udp.lost_percent:.1f}% lost"
            )
    result.add("rss", rss_bytes(backend.pids()) / 1e6)
    result.add("pss", pss_bytes(backend.pids()) / 1e6)


def run_backend(make: Callable[[], GatewayBackend], settings: Settings) -> BackendResult:
    backend = make()
    result = BackendResult(backend.name)
    progress(f"{backend.name}: building topology")
    try:
        with topology(backend, clients=2, wireguard_go=settings.wireguard_go) as topo:
            progress(f"{backend.name}: ready")
            measure(topo, settings, result)
    except BackendUnavailable as exc:
        result.error = str(exc)
        result.error_log = exc.log[-2000:]
        progress(f"{backend.name}: NOT MEASURED: {exc}\n{exc.log[-2000:]}")
    result.finish()
    return result


def backends(settings: Settings) -> list[Callable[[], GatewayBackend]]:
    makers: list[Callable[[], GatewayBackend]] = [
        functools.partial(WireGuardGoGateway, settings.wireguard_go)
    ]
    if not settings.skip_firezone:
        cmd = settings.gw_cmd or None
        makers += [functools.partial(FirezoneGateway, w, cmd) for w in settings.workers]
    return makers


def load_average() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def machine(wireguard_go: str) -> dict[str, str]:
    return {
        "cores": str(psutil.cpu_count()),
        "cpu": platform.processor() or platform.machine(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "wireguard-go": f"{tool_version(wireguard_go, '--version')} ({wireguard_go})",
        "iperf3": tool_version("iperf3", "--version"),
    }


def parse_args(argv: Sequence[str]) -> tuple[Settings, bool]:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_network", description=__doc__)
    parser.add_argument("--duration", type=int, default=10, help="seconds per iperf3 run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", default="1,2,4", help="firezone-gw --workers values")
    parser.add_argument("--udp-rate", default="300M", help="iperf3 -b for the fixed-rate UDP case")
    parser.add_argument("--ping-count", type=int, default=200)
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    parser.add_argument("--baseline-only", action="store_true", help="skip firezone-gw")
    parser.add_argument(
        "--gw-cmd",
        default="",
        help="firezone-gw command template with {exe} {config} {workers} "
        f"(default: ${FIREZONE_CMD_ENV} or {DEFAULT_FIREZONE_CMD!r})",
    )
    add_wireguard_go_option(parser)
    parser.add_argument("--no-docs", action="store_true", help="don't update docs/BENCHMARKS.md")
    args = parser.parse_args(argv)
    if args.duration < 1 or args.repeats < 1 or args.ping_count < 2 or args.idle_seconds <= 0:
        parser.error("--duration, --repeats, --idle-seconds must be positive, --ping-count >= 2")
    try:
        workers = tuple(int(w) for w in args.workers.split(",") if w)
    except ValueError:
        parser.error(f"--workers wants a comma-separated list of integers, got {args.workers!r}")
    settings = Settings(
        duration=args.duration,
        repeats=args.repeats,
        workers=workers,
        udp_rate=args.udp_rate,
        ping_count=args.ping_count,
        idle_seconds=args.idle_seconds,
        skip_firezone=args.baseline_only,
        gw_cmd=args.gw_cmd,
        wireguard_go=args.wireguard_go,
    )
    return settings, not args.no_docs


def add_wireguard_go_option(parser: argparse.ArgumentParser) -> None:
    """--wireguard-go PATH, checked at once: a missing binary is a usage error, not a crash."""

    def existing(path: str) -> str:
        try:
            return wireguard_go_binary(path)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from exc

    parser.add_argument(
        "--wireguard-go",
        type=existing,
        default=DEFAULT_WIREGUARD_GO,
        metavar="PATH",
        help="wireguard-go for the clients and the reference gateway (default: %(default)s)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    raw = list(sys.argv[1:] if argv is None else argv)
    settings, update_docs = parse_args(raw)
    command = shlex.join(["python", "-m", "bench.bench_network", *raw])
    load_before = load_average()
    wg_version = tool_version(settings.wireguard_go, "--version")
    progress(f"wireguard-go {wg_version}: {settings.wireguard_go}")
    results = [run_backend(make, settings) for make in backends(settings)]
    host = machine(settings.wireguard_go) | {
        "load average (1/5/15 min) before/after": f"{load_before} / {load_average()}"
    }
    table = report.markdown_table(results, METRICS, BASELINE)
    print(table)
    doc = {
        "command": command,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": host,
        "settings": asdict(settings),
        "metrics": [asdict(m) for m in METRICS],
        "results": [asdict(r) for r in results],
    }
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / f"network-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(doc, indent=2) + "\n")
    progress(f"wrote {path}")
    if update_docs:
        report.update_benchmarks_doc(
            table, command, host, settings.repeats, wireguard_go=wg_version
        )
        progress(f"updated {report.BENCHMARKS_DOC}")
    baseline_ok = any(r.backend == BASELINE and r.error is None for r in results)
    return 0 if baseline_ok else 1


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    # SystemExit unwinds through every `finally`: namespaces, gateways and sockets go too.
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    sys.exit(main())
