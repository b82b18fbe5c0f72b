"""What bench_profile reads: the kernel's per-process counters, the gateway's stats segment
and rings, each namespace's UDP and interface counters, py-spy samples and ping times.

Readers only: each takes a snapshot (subtract two with `minus`) and starts nothing that
outlives it, except start_ping and py_spy, whose processes their caller waits for.
"""

from __future__ import annotations

import collections
import contextlib
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from bench.bench_network import progress
from gateway.telemetry import stats as st
from testbed.addresses import RESOURCE_ADDR
from testbed.gateways import FirezoneGateway, GatewayBackend
from testbed.netns import NetNS
from testbed.topology import Topology

TOP_LINES = 6
RING_COPY_DELAY = 1.2  # s: the supervisor copies ring counters to the stats segment every 1 s
_RING_WORDS = {
    "packets": st.RING_PACKETS,
    "consumer_wakeups": st.RING_CONSUMER_WAKEUPS,
    "producer_wakeups": st.RING_PRODUCER_WAKEUPS,
    "full_events": st.RING_FULL_EVENTS,
}
PING_INTERVAL = 0.02  # 50 pings a second: a latency probe, not load
_PING_TIME = re.compile(r"time=([\d.]+) ms")
_LINE_IN_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")

# --- what the kernel says about each process ------------------------------------------------


@dataclass(frozen=True)
class ProcSample:
    user: float
    system: float
    voluntary: int
    involuntary: int
    read_calls: int
    write_calls: int

    @classmethod
    def of(cls, pid: int) -> ProcSample:
        proc = psutil.Process(pid)
        cpu, io = proc.cpu_times(), proc.io_counters()
        voluntary, involuntary = context_switches(pid)
        return cls(cpu.user, cpu.system, voluntary, involuntary, io.read_count, io.write_count)

    def minus(self, before: ProcSample) -> ProcSample:
        return ProcSample(
            self.user - before.user,
            self.system - before.system,
            self.voluntary - before.voluntary,
            self.involuntary - before.involuntary,
            self.read_calls - before.read_calls,
            self.write_calls - before.write_calls,
        )


def context_switches(pid: int) -> tuple[int, int]:
    """Voluntary and involuntary switches summed over every thread (wireguard-go has many;
    /proc/PID/status alone counts only the main thread)."""
    voluntary = involuntary = 0
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        with contextlib.suppress(OSError):
            for line in status.read_text().splitlines():
                if line.startswith("voluntary_ctxt_switches:"):
                    voluntary += int(line.split()[1])
                elif line.startswith("nonvoluntary_ctxt_switches:"):
                    involuntary += int(line.split()[1])
    return voluntary, involuntary


def sample_all(pids: Mapping[str, int]) -> dict[str, ProcSample]:
    return {role: ProcSample.of(pid) for role, pid in pids.items()}


# --- what the gateway and the namespaces count ------------------------------------------


def gateway_counters(gw: FirezoneGateway) -> dict[str, dict[str, int]]:
    """Per role: the process's own counters and drops (the stats segment)."""
    region = gw.stats()
    try:
        snap = region.snapshot(sample_processes=False)
    finally:
        region.close()
    return {
        p.role: asdict(p.counters) | {f"drop_{k}": v for k, v in p.drops.items()}
        for p in snap.processes
    }


def ring_counters(gw: FirezoneGateway) -> dict[str, dict[str, int]]:
    """Every ring's packets, wake-ups and full events, as the supervisor last copied them
    (once a second: read them a second after the traffic stopped, see RING_COPY_DELAY)."""
    region = gw.stats()
    try:
        return {
            name: {key: int(region.ring_block(name)[word]) for key, word in _RING_WORDS.items()}
            for name in region.ring_names
        }
    finally:
        region.close()


def parse_snmp_udp(text: str) -> dict[str, int]:
    """The `Udp:` counters of /proc/net/snmp (header line, then value line)."""
    rows = [line.split() for line in text.splitlines() if line.startswith("Udp:")]
    if len(rows) < 2:
        return {}
    return {k: int(v) for k, v in zip(rows[0][1:], rows[1][1:], strict=True)}


def parse_link_stats(text: str) -> dict[str, dict[str, int]]:
    """`ip -s -j link show` -> interface -> rx/tx packets, dropped, errors."""
    links = {}
    for link in json.loads(text or "[]"):
        stats = link.get("stats64") or link.get("stats") or {}
        row = {}
        for way in ("rx", "tx"):
            for key in ("packets", "dropped", "errors"):
                row[f"{way}_{key}"] = int(stats.get(way, {}).get(key, 0))
        links[link["ifname"]] = row
    return links


def namespace_counters(ns: NetNS) -> dict[str, int]:
    """UDP socket counters and every interface's drops in `ns`, flat ("udp InErrors")."""
    flat = {f"udp {k}": v for k, v in parse_snmp_udp(ns.run("cat", "/proc/net/snmp")).items()}
    for ifname, row in parse_link_stats(ns.run("ip", "-s", "-j", "link", "show")).items():
        flat |= {f"{ifname} {k}": v for k, v in row.items()}
    return flat


def minus(after: Mapping[str, int], before: Mapping[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items()}


# --- py-spy ---------------------------------------------------------------------------------


def top_lines(raw: str, limit: int = TOP_LINES) -> list[tuple[str, float]]:
    """From py-spy's raw (collapsed) output: the lines where samples ended, with their share.

    Each input line is `frame;frame;...;leaf count`, a frame `function (file:line)`; the
    leaf is where the process was (a C call such as os.writev shows as the line calling it).
    """
    counts: collections.Counter[str] = collections.Counter()
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        leaf = stack.rsplit(";", 1)[-1]
        match = _LINE_IN_FRAME.match(leaf)
        if match:
            path = "/".join(Path(match["file"]).parts[-2:])
            where = f"{path}:{match['line']}" if match["line"] else path
            leaf = f"{match['func']} ({where})"
        counts[leaf] += int(count)
    total = sum(counts.values())
    return [(leaf, n / total) for leaf, n in counts.most_common(limit)] if total else []


@contextlib.contextmanager
def py_spy(pids: Mapping[str, int], duration: int) -> Iterator[dict[str, list[tuple[str, float]]]]:
    """Sample every process for `duration` s while the block runs; fills role -> top lines."""
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    tops: dict[str, list[tuple[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="fzprof-") as tmp:
        procs = {}
        for role, pid in pids.items():
            out = Path(tmp) / f"{role}.txt"
            argv = [exe, "record", "--pid", str(pid), "--duration", str(duration)]
            argv += ["--rate", "250", "--nonblocking", "--format", "raw", "-o", str(out)]
            procs[role] = (
                out,
                subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE),
            )
        try:
            yield tops
        finally:
            for role, (out, proc) in procs.items():
                try:
                    _, err = proc.communicate(timeout=duration + 30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.communicate()
                    continue
                if out.exists():
                    tops[role] = top_lines(out.read_text())
                else:
                    progress(f"py-spy {role}: no profile: {err.decode(errors='replace')[-300:]}")


def have_py_spy() -> bool:
    return bool(shutil.which("py-spy") or (Path(sys.executable).parent / "py-spy").exists())


# --- ping ---------------------------------------------------------------------------------


def start_ping(topo: Topology[GatewayBackend], seconds: float) -> subprocess.Popen[str]:
    """Ping the resource from client 0 every PING_INTERVAL s for `seconds` (runs alongside)."""
    count = max(2, int(seconds / PING_INTERVAL))
    argv = topo.client_ns(0).exec_argv(
        "ping", "-c", str(count), "-i", str(PING_INTERVAL), "-W", "1", RESOURCE_ADDR
    )
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


def ping_result(proc: subprocess.Popen[str], timeout: float) -> list[float]:
    """The round-trip times (ms) a start_ping process saw."""
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return [float(m) for m in _PING_TIME.findall(out)]


def rtt_summary(rtts: Sequence[float]) -> str:
    if len(rtts) < 2:
        return "no ping replies"
    p99 = statistics.quantiles(rtts, n=100, method="inclusive")[98]
    return f"ping p50 {statistics.median(rtts):.3f} ms, p99 {p99:.3f} ms ({len(rtts)} replies)"
