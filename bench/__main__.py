"""Run every benchmark in bench/: `python -m bench [--only NAME]... [network options]`.

Each bench/bench_*.py module runs as its own subprocess (`python -m bench.<module>`) with its
own output, the network benchmark first. Options this runner does not know are passed to the
network benchmark (see `python -m bench.bench_network --help`); `--wireguard-go PATH` goes to
every benchmark that runs wireguard-go (network and profile).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
NETWORK = "bench_network"
RUNS_WIREGUARD_GO = (NETWORK, "bench_profile")


def discover() -> list[str]:
    """Module names of bench/bench_*.py, the network benchmark first."""
    names = sorted(p.stem for p in BENCH_DIR.glob("bench_*.py"))
    return sorted(names, key=lambda n: n != NETWORK)


def module_args(name: str, network_args: Sequence[str], wireguard_go: str | None) -> list[str]:
    """The options benchmark `name` gets: the unknown ones if it is the network benchmark,
    --wireguard-go if it runs wireguard-go."""
    extra = list(network_args) if name == NETWORK else []
    if wireguard_go and name in RUNS_WIREGUARD_GO:
        extra += ["--wireguard-go", wireguard_go]
    return extra


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--only", action="append", default=[], help="e.g. network, ring")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    parser.add_argument("--wireguard-go", metavar="PATH", help="wireguard-go to compare with")
    args, network_args = parser.parse_known_args(argv)
    modules = discover()
    if args.list:
        print("\n".join(modules))
        return 0
    wanted = {n if n.startswith("bench_") else f"bench_{n}" for n in args.only}
    if unknown := wanted - set(modules):
        parser.error(f"no such benchmark: {', '.join(sorted(unknown))} (have {modules})")
    failed = []
    for name in modules:
        if wanted and name not in wanted:
            continue
        extra = module_args(name, network_args, args.wireguard_go)
        print(f"\n=== {name} ===", flush=True)
        start = time.monotonic()
        rc = subprocess.run(
            [sys.executable, "-m", f"bench.{name}", *extra], cwd=BENCH_DIR.parent, check=False
        ).returncode
        print(f"=== {name}: exit {rc} after {time.monotonic() - start:.0f}s ===", flush=True)
        if rc != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
