"""Handshake flood: does a client's session keep working while a third host floods the
gateway with initiations that carry a valid mac1? firezone-gw against wireguard-go as the
gateway, in the same run.

    python -m bench.bench_flood [--rates 20000,50000] [--pings 20] [--repeats 3] [--workers 2]

Topology (testbed/topology.py, two clients): client 0 pings the resource `--pings` times
(0.2 s apart, 1 s timeout each) while client 1's namespace, a third host, sends initiations
from its own address at each of `--rates` per second: random bytes with a valid mac1 for
the gateway's public key (anyone who knows the key can make them) and no mac2, so the
gateway is under load and answers with cookie replies or drops. Prints the replies each
gateway got through and writes the docs/BENCHMARKS.md section.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from gateway.keys import decode_key
from testbed.addresses import LISTEN_PORT, RESOURCE_ADDR
from testbed.flood import flood
from testbed.gateways import (
    BackendUnavailable,
    FirezoneGateway,
    GatewayBackend,
    WireGuardGoGateway,
)
from testbed.topology import Topology, tool_version, topology

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS_DOC = ROOT / "docs" / "BENCHMARKS.md"
BEGIN = "<!-- bench:flood begin (written by python -m bench.bench_flood) -->"
END = "<!-- bench:flood end -->"
_RECEIVED = re.compile(r"(\d+) received")


@dataclass
class Round:
    """One repetition: ping replies, initiations sent, datagrams the gateway's kernel dropped."""

    replies: int
    sent: int
    kernel_dropped: int


def pings_during_flood(topo: Topology[GatewayBackend], rate: int, pings: int) -> Round:
    """Client 0 pings while client 1's namespace floods the gateway."""
    spec = topo.client_specs[1]
    seconds = pings * 0.2 + 4
    flooder = topo.client_ns(1).popen(
        sys.executable,
        "-m",
        "testbed.flood",
        spec.gateway_underlay_addr,
        str(LISTEN_PORT),
        topo.backend.public_key,
        str(rate),
        str(seconds),
        stdout=subprocess.PIPE,
        cwd=str(ROOT),
    )
    before = udp_receive_errors(topo)
    try:
        time.sleep(1.5)  # the gateway is under load before the first ping
        argv = topo.client_ns(0).exec_argv(
            "ping", "-c", str(pings), "-i", "0.2", "-W", "1", "-q", RESOURCE_ADDR
        )
        out = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=pings + 30)
        found = _RECEIVED.search(out.stdout)
        stdout, _ = flooder.communicate(timeout=seconds + 30)
    finally:
        if flooder.poll() is None:
            flooder.kill()
            flooder.wait()
    return Round(
        replies=int(found.group(1)) if found else 0,
        sent=int(stdout.decode().strip() or 0),
        kernel_dropped=udp_receive_errors(topo) - before,
    )


def udp_receive_errors(topo: Topology[GatewayBackend]) -> int:
    """RcvbufErrors of UDP in the gateway's namespace (/proc/net/snmp)."""
    lines = [line.split() for line in topo.gateway_ns.run("cat", "/proc/net/snmp").splitlines()]
    names, values = [line for line in lines if line[0] == "Udp:"][:2]
    return int(values[names.index("RcvbufErrors")])


@dataclass
class Row:
    backend: str
    rate: int
    rounds: list[Round] = field(default_factory=list)
    error: str = ""


def run_backend(
    make: Callable[[], GatewayBackend], rates: Sequence[int], pings: int, repeats: int
) -> list[Row]:
    """One topology around the backend; `repeats` rounds at each rate."""
    backend = make()
    rows = [Row(backend.name, rate) for rate in rates]
    try:
        with topology(backend, clients=2, iperf=False) as topo:
            for row in rows:
                for rep in range(repeats):
                    result = pings_during_flood(topo, row.rate, pings)
                    row.rounds.append(result)
                    print(
                        f"{backend.name} at {row.rate}/s: {rep + 1}/{repeats}: {result.replies}/"
                        f"{pings} replies; {result.sent} initiations sent, "
                        f"{result.kernel_dropped} datagrams dropped by the gateway's kernel",
                        file=sys.stderr,
                        flush=True,
                    )
    except BackendUnavailable as exc:
        for row in rows:
            row.error = str(exc)
    return rows


def section(command: str, pings: int, rows: list[Row]) -> str:
    lines = [
        BEGIN,
        "## Handshake flood: pings through a session while a third host floods initiations",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} with `{command}` from the repository root, as"
        f" root (wireguard-go {tool_version('wireguard-go', '--version')}; load average"
        f" {' '.join(f'{x:.1f}' for x in os.getloadavg())} at the end). Client 0 pings the"
        f" resource {pings} times (0.2 s apart, 1 s timeout) through its session while client"
        " 1's namespace sends initiations with a valid mac1 and no mac2 to the gateway at the"
        " rate shown (bench/bench_flood.py). Each cell is one repetition: replies (initiations"
        " the flooder got out / datagrams the gateway's kernel dropped, UDP receive buffer"
        " full). The two cores are shared with other work: under contention the gateway's"
        " processes get less CPU than they need and its socket overflows.",
        "",
        "| gateway | initiations/s | replies (sent / dropped by the kernel) |",
        "|---|---|---|",
    ]
    for row in sorted(rows, key=lambda r: r.rate):
        cells = ", ".join(
            f"{r.replies}/{pings} ({r.sent} / {r.kernel_dropped})" for r in row.rounds
        )
        error = f" — {row.error}" if row.error else ""
        lines.append(f"| {row.backend} | {row.rate or 'unlimited'} | {cells}{error} |")
    lines.append(END)
    return "\n".join(lines)


def update_doc(text: str, path: Path = BENCHMARKS_DOC) -> None:
    doc = path.read_text()
    if BEGIN in doc and END in doc:
        head, rest = doc.split(BEGIN, 1)
        doc = head + text + rest.split(END, 1)[1]
    else:
        doc = doc.rstrip() + "\n\n" + text + "\n"
    path.write_text(doc)


def main(argv: Sequence[str] | None = None) -> int:
    raw = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m bench.bench_flood", description=__doc__)
    parser.add_argument("--rates", default="20000,50000", help="initiations/s, 0: unlimited")
    parser.add_argument("--pings", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="firezone-gw --workers")
    parser.add_argument(
        "--gw-cmd",
        default="",
        help="firezone-gw command template with {exe} {config} {workers}, as bench_network",
    )
    parser.add_argument("--no-docs", action="store_true", help="don't update docs/BENCHMARKS.md")
    parser.add_argument("--send-to", help=argparse.SUPPRESS)  # the flooder's own mode
    parser.add_argument("--key", help=argparse.SUPPRESS)
    parser.add_argument("--rate", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(raw)
    if args.send_to:
        print(flood((args.send_to, LISTEN_PORT), decode_key(args.key), args.rate, args.seconds))
        return 0
    try:
        rates = [int(r) for r in args.rates.split(",") if r]
    except ValueError:
        parser.error(f"--rates wants a comma-separated list of integers, got {args.rates!r}")
    if any(r < 0 for r in rates) or args.pings < 1 or args.repeats < 1:
        parser.error("--rates must be >= 0, --pings and --repeats >= 1")
    makers: list[Callable[[], GatewayBackend]] = [
        WireGuardGoGateway,
        lambda: FirezoneGateway(args.workers, args.gw_cmd or None),
    ]
    rows = [row for make in makers for row in run_backend(make, rates, args.pings, args.repeats)]
    text = section(shlex.join(["python", "-m", "bench.bench_flood", *raw]), args.pings, rows)
    print(text)
    if not args.no_docs:
        update_doc(text)
    return 0 if all(not row.error for row in rows) else 1


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the topology's cleanup


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    sys.exit(main())
