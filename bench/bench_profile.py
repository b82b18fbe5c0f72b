"""Where each microsecond goes: CPU, sleeps and system calls per packet, per gateway process.

    python -m bench.bench_profile [--duration 10] [--workers 2] [--wireguard-go PATH]
                                  [--py-spy] [--udp-rate 300M] [--no-reference]
                                  [--label NAME] [--no-docs]

One topology (testbed/topology.py) around firezone-gw --workers N, then the same around
wireguard-go as the reference gateway. For one TCP upload and one TCP download (client 0, one
stream) it reads, before and after the run:

- per process (supervisor, each worker, crypto, UDP): user and system CPU seconds, voluntary
  context switches (each one a sleep in epoll that really blocked: a wake-up), involuntary
  ones (preempted: the cores were busy) and read/write-family system calls (`/proc/PID/io`
  syscr/syscw: read, readv, write, writev, e.g. TUN and eventfd I/O; recvmsg, sendmsg and
  epoll_wait are not counted there);
- the gateway's own counters (the stats segment): packets each process moved, GSO batches;
- every ring's counters (shm_ring's, copied to the stats segment by the supervisor every
  second): packets, eventfd writes to wake each side, full events.

CPU per packet divides by the packets that process handled: a worker the packets it read
from and wrote to its TUN queue, the UDP process the datagrams it received and sent, crypto
and supervisor every tunnel datagram (each one decrypted or encrypted once). The "per tunnel
datagram" column divides by the same total for every process, so it adds up to the whole.
wireguard-go counts nothing of its own and its GSO moves super-packets through every
interface, so its "packets" are an estimate: payload bytes / full-size TCP segment (data
only, ACKs not counted). CPU-s/GB in each heading is exact for both.

With --py-spy (if `py-spy` is installed: the dev extras have it) a second run of each case
samples every process (py-spy record --nonblocking) and lists the lines where most samples
ended; the first run is never profiled, so py-spy's own CPU does not skew the figures.

Ping (client 0 to the resource, every 20 ms) runs for 4 s before the cases (idle) and
during each TCP run (under load): p50 and p99 round trips.

Then a UDP run at a fixed offer in each direction lists every counter along the path that
lost datagrams: UDP socket errors in each namespace (/proc/net/snmp), interface drops (`ip
-s link`), the gateway's drop reasons and ring full events, and iperf3's loss.

The readers are in bench/probes.py. Prints markdown, writes bench/results/profile-<time>.json
and the section `--label` of docs/BENCHMARKS.md (one section per label, so "before" and
"after X" stay side by side).
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench import report
from bench.bench_network import add_wireguard_go_option, load_average, machine, progress
from bench.probes import (
    RING_COPY_DELAY,
    ProcSample,
    gateway_counters,
    have_py_spy,
    minus,
    namespace_counters,
    ping_result,
    py_spy,
    ring_counters,
    rtt_summary,
    sample_all,
    start_ping,
)
from testbed.addresses import TUNNEL_MTU
from testbed.gateways import FirezoneGateway, GatewayBackend, WireGuardGoGateway
from testbed.iperf import IperfResult, iperf_argv, parse_iperf
from testbed.topology import Topology, topology

RESULTS_DIR = Path(__file__).parent / "results"
TCP_CASES: tuple[tuple[str, list[str]], ...] = (("TCP upload", []), ("TCP download", ["-R"]))
TCP_PAYLOAD_PER_PACKET = TUNNEL_MTU - 20 - 20 - 12  # IPv4, TCP, timestamps option


# --- one case -------------------------------------------------------------------------------


@dataclass
class CaseResult:
    backend: str
    case: str
    seconds: float
    iperf: IperfResult
    processes: dict[str, ProcSample]
    counters: dict[str, dict[str, int]] = field(default_factory=dict)
    rings: dict[str, dict[str, int]] = field(default_factory=dict)
    tunnel_datagrams: int = 0
    top: dict[str, list[tuple[str, float]]] = field(default_factory=dict)
    ping_ms: list[float] = field(default_factory=list)  # client 0 to the resource, meanwhile


def run_client(topo: Topology[GatewayBackend], args: Sequence[str], duration: int) -> IperfResult:
    argv = iperf_argv(topo, 0, args, duration)
    out = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=duration + 30)
    try:
        return parse_iperf(out.stdout, udp="-u" in args)
    except (ValueError, KeyError) as exc:
        raise RuntimeError(f"iperf3 failed: {exc} {out.stderr[-400:]}") from exc


def backend_pids(backend: GatewayBackend) -> dict[str, int]:
    if isinstance(backend, FirezoneGateway):
        return {"supervisor": backend.pids()[0], **backend.role_pids()}
    pids = backend.pids()
    return {backend.name: pids[0]} if pids else {}


def measure_case(
    topo: Topology[GatewayBackend], case: str, args: Sequence[str], duration: int
) -> CaseResult:
    backend = topo.backend
    pids = backend_pids(backend)
    gw = backend if isinstance(backend, FirezoneGateway) else None
    counters_before = gateway_counters(gw) if gw else {}
    rings_before = ring_counters(gw) if gw else {}
    procs_before = sample_all(pids)
    start = time.monotonic()
    ping = start_ping(topo, duration - 1)  # ends before iperf3 does: all of it under load
    result = run_client(topo, args, duration)
    seconds = time.monotonic() - start
    procs = {r: s.minus(procs_before[r]) for r, s in sample_all(pids).items()}
    out = CaseResult(backend.name, case, seconds, result, procs)
    out.ping_ms = ping_result(ping, timeout=30)
    if gw:
        after = gateway_counters(gw)
        out.counters = {r: minus(after[r], counters_before.get(r, {})) for r in after}
        out.tunnel_datagrams = sum(
            row["udp_rx_packets"] + row["udp_tx_packets"] for row in out.counters.values()
        )
        time.sleep(RING_COPY_DELAY)
        rings_after = ring_counters(gw)
        out.rings = {
            name: minus(row, rings_before.get(name, {})) for name, row in rings_after.items()
        }
    else:
        # No counters of its own, and with GSO (0.0.20250522, client and gateway) every
        # interface counts super-packets: estimate full-size data segments from the bytes.
        out.tunnel_datagrams = result.bytes // TCP_PAYLOAD_PER_PACKET
    return out


def packets_of(role: str, result: CaseResult) -> int:
    """The packets `role` handled (see the module docstring)."""
    own = result.counters.get(role, {})
    if role.startswith("worker"):
        return own.get("tun_rx_packets", 0) + own.get("tun_tx_packets", 0)
    if role == "udp":
        return own.get("udp_rx_packets", 0) + own.get("udp_tx_packets", 0)
    if role == "crypto":  # each datagram decrypted, each TUN packet encrypted
        totals = collections.Counter[str]()
        for row in result.counters.values():
            totals.update(row)
        return totals["udp_rx_packets"] + totals["tun_rx_packets"]
    return result.tunnel_datagrams


# --- tables ---------------------------------------------------------------------------------


def _us(seconds: float, packets: int) -> str:
    return f"{1e6 * seconds / packets:.2f}" if packets else "-"


def _per(count: float, packets: int) -> str:
    return f"{count / packets:.2f}" if packets else "-"


def process_table(result: CaseResult) -> str:
    """One row per process, then the total: CPU, wake-ups and system calls per packet."""
    head = (
        "| process | packets | user µs/pkt | sys µs/pkt | µs per tunnel datagram "
        "| wake-ups/s | packets/wake-up | preempted/s | read calls/pkt | write calls/pkt |"
    )
    lines = [head, "|---|" + "---:|" * 9]
    secs, tunnel = result.seconds, result.tunnel_datagrams
    total = ProcSample(0, 0, 0, 0, 0, 0)
    for role, s in result.processes.items():
        n = packets_of(role, result)
        total = ProcSample(
            *(a + b for a, b in zip(asdict(total).values(), asdict(s).values(), strict=True))
        )
        lines.append(
            f"| {role} | {n} | {_us(s.user, n)} | {_us(s.system, n)} "
            f"| {_us(s.user + s.system, tunnel)} | {s.voluntary / secs:.0f} "
            f"| {_per(n, s.voluntary)} | {s.involuntary / secs:.0f} "
            f"| {_per(s.read_calls, n)} | {_per(s.write_calls, n)} |"
        )
    if len(result.processes) > 1:
        lines.append(
            f"| **all** | {tunnel} | {_us(total.user, tunnel)} | {_us(total.system, tunnel)} "
            f"| {_us(total.user + total.system, tunnel)} | {total.voluntary / secs:.0f} "
            f"| {_per(tunnel, total.voluntary)} | {total.involuntary / secs:.0f} "
            f"| {_per(total.read_calls, tunnel)} | {_per(total.write_calls, tunnel)} |"
        )
    return "\n".join(lines)


def ring_table(result: CaseResult) -> str:
    lines = [
        "| ring | packets | consumer wake-ups/s | packets/consumer wake-up "
        "| producer wake-ups/s | full events |",
        "|---|" + "---:|" * 5,
    ]
    secs = result.seconds
    for name, r in result.rings.items():
        lines.append(
            f"| {name} | {r['packets']} | {r['consumer_wakeups'] / secs:.0f} "
            f"| {_per(r['packets'], r['consumer_wakeups'])} "
            f"| {r['producer_wakeups'] / secs:.0f} | {r['full_events']} |"
        )
    return "\n".join(lines)


def gso_line(result: CaseResult) -> str:
    udp = result.counters.get("udp", {})
    batches, tx = udp.get("gso_batches", 0), udp.get("udp_tx_packets", 0)
    return f"UDP sends: {tx} datagrams in {batches} GSO sendmsg calls ({_per(tx, batches)} each)."


def top_table(result: CaseResult) -> str:
    lines = []
    for role, top in result.top.items():
        shown = "; ".join(f"{share:.0%} {where}" for where, share in top) or "no samples (idle)"
        lines.append(f"- {role}: {shown}")
    return "\n".join(lines)


def case_markdown(result: CaseResult) -> str:
    gbits = result.iperf.bits_per_second / 1e9
    cpu = sum(s.user + s.system for s in result.processes.values())
    per_gb = cpu / (result.iperf.bytes / 1e9) if result.iperf.bytes else 0.0
    parts = [
        f"#### {result.backend}, {result.case}: {gbits:.3f} Gbit/s, {per_gb:.1f} CPU-s/GB, "
        f"{result.tunnel_datagrams / result.seconds:,.0f} tunnel datagrams/s",
        "",
        f"Under this load: {rtt_summary(result.ping_ms)}.",
        "",
        process_table(result),
    ]
    if result.rings:
        parts += ["", ring_table(result), "", gso_line(result)]
    if result.top:
        parts += ["", "py-spy, where the samples ended (share of each process's samples):", ""]
        parts.append(top_table(result))
    return "\n".join(parts)


# --- UDP loss -------------------------------------------------------------------------------


@dataclass
class LossResult:
    direction: str
    iperf: IperfResult
    where: dict[str, int]  # "namespace counter" -> increase, only those that grew


LOSS_COUNTERS = re.compile(r"(Errors|dropped|errors|ring_full|_failed|too_big|full_events)")


def measure_loss(
    topo: Topology[GatewayBackend], direction: str, args: Sequence[str], duration: int
) -> LossResult:
    hosts = {"client": topo.client_ns(0), "gateway": topo.gateway_ns, "resource": topo.resource}
    backend = topo.backend
    gw = backend if isinstance(backend, FirezoneGateway) else None

    def snapshot() -> dict[str, int]:
        flat: dict[str, int] = {}
        for host, ns in hosts.items():
            flat |= {f"{host}: {k}": v for k, v in namespace_counters(ns).items()}
        if gw:
            for role, row in gateway_counters(gw).items():
                flat |= {f"gateway {role}: {k}": v for k, v in row.items() if k.startswith("drop_")}
            for name, ring in ring_counters(gw).items():
                flat[f"ring {name}: full_events"] = ring["full_events"]
        return flat

    before = snapshot()
    result = run_client(topo, args, duration)
    time.sleep(RING_COPY_DELAY)
    grew = {k: v for k, v in minus(snapshot(), before).items() if v > 0 and LOSS_COUNTERS.search(k)}
    return LossResult(direction, result, grew)


def loss_markdown(backend: str, losses: Sequence[LossResult], rate: str) -> str:
    lines = [f"#### {backend}: UDP at a fixed offer of {rate}bit/s, where datagrams were lost", ""]
    for loss in losses:
        sent_lost = f"{loss.iperf.lost_percent:.2f}% lost (iperf3)"
        where = ", ".join(f"{k} +{v}" for k, v in loss.where.items()) or "no counter grew"
        lines.append(f"- {loss.direction}: {sent_lost}; {where}")
    return "\n".join(lines)


# --- main -----------------------------------------------------------------------------------


@dataclass
class Settings:
    duration: int = 10
    workers: int = 2
    udp_rate: str = "300M"
    udp_length: int = 1200
    profile: bool = False
    reference: bool = True
    wireguard_go: str = ""


def profile_backend(
    backend: GatewayBackend, settings: Settings
) -> tuple[list[str], dict[str, object]]:
    sections: list[str] = []
    cases: list[dict[str, object]] = []
    progress(f"{backend.name}: building topology")
    with topology(backend, clients=1, wireguard_go=settings.wireguard_go) as topo:
        idle_seconds = 4.0
        idle = ping_result(start_ping(topo, idle_seconds), timeout=idle_seconds + 30)
        sections.append(f"#### {backend.name}, idle: {rtt_summary(idle)}")
        for case, args in TCP_CASES:
            topo.wait_iperf_idle()
            result = measure_case(topo, case, args, settings.duration)
            if settings.profile and isinstance(backend, FirezoneGateway):
                topo.wait_iperf_idle()
                pids = backend_pids(topo.backend)
                with py_spy(pids, max(1, settings.duration - 1)) as tops:
                    run_client(topo, args, settings.duration)
                result.top = tops
            progress(f"{backend.name}: {case}: {result.iperf.bits_per_second / 1e9:.3f} Gbit/s")
            sections.append(case_markdown(result))
            cases.append(asdict(result))
        losses = []
        for direction, extra in (("upload", []), ("download", ["-R"])):
            topo.wait_iperf_idle()
            udp_args = ["-u", "-b", settings.udp_rate, "-l", str(settings.udp_length), *extra]
            losses.append(measure_loss(topo, direction, udp_args, settings.duration))
            progress(f"{backend.name}: UDP {direction}: {losses[-1].iperf.lost_percent:.2f}% lost")
        sections.append(loss_markdown(backend.name, losses, settings.udp_rate))
    record: dict[str, object] = {
        "backend": backend.name,
        "idle_ping_ms": idle,
        "cases": cases,
        "loss": [asdict(x) for x in losses],
    }
    return sections, record


def section_markers(label: str) -> tuple[str, str]:
    return (
        f"<!-- bench:profile {label} begin (written by python -m bench.bench_profile) -->",
        f"<!-- bench:profile {label} end -->",
    )


def profile_section(label: str, command: str, host: Mapping[str, str], body: str) -> str:
    begin, end = section_markers(label)
    machine_line = "; ".join(f"{k}: {v}" for k, v in host.items())
    return "\n".join(
        [
            begin,
            f"### Profile: {label}",
            "",
            f"Measured {time.strftime('%Y-%m-%d %H:%M')} with `{command}` (as root). Machine:"
            f" {machine_line}. One run per case, on cores shared with other work: the"
            " figures are noisy (compare runs made close together, and the rows within a run).",
            "",
            body,
            end,
        ]
    )


def parse_args(argv: Sequence[str]) -> tuple[Settings, str, bool]:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_profile", description=__doc__)
    parser.add_argument("--duration", type=int, default=10, help="seconds per iperf3 run")
    parser.add_argument("--workers", type=int, default=2, help="firezone-gw --workers")
    parser.add_argument("--udp-rate", default="300M", help="iperf3 -b for the UDP loss runs")
    parser.add_argument("--py-spy", action="store_true", help="also sample with py-spy")
    parser.add_argument("--no-reference", action="store_true", help="skip wireguard-go")
    parser.add_argument("--label", default="latest", help="names the docs section (e.g. before)")
    add_wireguard_go_option(parser)
    parser.add_argument("--no-docs", action="store_true", help="don't update docs/BENCHMARKS.md")
    args = parser.parse_args(argv)
    if args.duration < 2 or args.workers < 1:
        parser.error("--duration must be at least 2 and --workers at least 1")
    if args.py_spy and not have_py_spy():
        parser.error("--py-spy: py-spy is not installed (pip install -e '.[dev]')")
    settings = Settings(
        duration=args.duration,
        workers=args.workers,
        udp_rate=args.udp_rate,
        profile=args.py_spy,
        reference=not args.no_reference,
        wireguard_go=args.wireguard_go,
    )
    return settings, args.label, not args.no_docs


def main(argv: Sequence[str] | None = None) -> int:
    raw = list(sys.argv[1:] if argv is None else argv)
    settings, label, update_docs = parse_args(raw)
    command = shlex.join(["python", "-m", "bench.bench_profile", *raw])
    load_before = load_average()
    backends: list[GatewayBackend] = [FirezoneGateway(settings.workers)]
    if settings.reference:
        backends.append(WireGuardGoGateway(settings.wireguard_go))
    sections, records = [], []
    for backend in backends:
        body, record = profile_backend(backend, settings)
        sections += body
        records.append(record)
    host = machine(settings.wireguard_go) | {
        "load average (1/5/15 min) before/after": f"{load_before} / {load_average()}"
    }
    text = "\n\n".join(sections) + "\n"
    print(text)
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / f"profile-{time.strftime('%Y%m%d-%H%M%S')}.json"
    doc = {"command": command, "machine": host, "settings": asdict(settings), "runs": records}
    path.write_text(json.dumps(doc, indent=2) + "\n")
    progress(f"wrote {path}")
    if update_docs:
        old = report.BENCHMARKS_DOC.read_text()
        section = profile_section(label, command, host, text.rstrip())
        report.BENCHMARKS_DOC.write_text(
            report.replace_section(old, section, *section_markers(label))
        )
        progress(f"updated {report.BENCHMARKS_DOC}")
    return 0


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through every `finally`: namespaces go too


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    sys.exit(main())
