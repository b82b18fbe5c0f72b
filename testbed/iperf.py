"""iperf3 from the clients to their servers on the resource, read from `iperf3 -J`."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

from testbed.addresses import RESOURCE_ADDR
from testbed.gateways import GatewayBackend
from testbed.topology import Topology


@dataclass(frozen=True)
class IperfResult:
    bits_per_second: float
    bytes: int
    lost_percent: float = 0.0


def parse_iperf(output: str, *, udp: bool) -> IperfResult:
    """Receiver-side figures from `iperf3 -J` output; a run that errored raises ValueError."""
    doc = json.loads(output)
    if "error" in doc:
        raise ValueError(f"iperf3: {doc['error']}")
    received = doc["end"]["sum_received"]
    if udp:
        return IperfResult(received["bits_per_second"], received["bytes"], received["lost_percent"])
    return IperfResult(received["bits_per_second"], received["bytes"])


def iperf_argv(
    topo: Topology[GatewayBackend], client: int, args: Sequence[str], duration: int
) -> list[str]:
    port = topo.client_specs[client].iperf_port
    return topo.client_ns(client).exec_argv(
        "iperf3", "-c", RESOURCE_ADDR, "-p", str(port), "-t", str(duration), "-J", *args
    )


def run_iperf(
    topo: Topology[GatewayBackend],
    clients: Sequence[int],
    args: Sequence[str],
    duration: int,
    *,
    udp: bool,
) -> list[IperfResult]:
    """iperf3 from each of `clients` at once (each to its own server port)."""
    procs = [
        subprocess.Popen(
            iperf_argv(topo, c, args, duration), stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for c in clients
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=duration + 30)
        try:
            results.append(parse_iperf(out.decode(), udp=udp))
        except (ValueError, KeyError) as exc:
            raise RuntimeError(f"iperf3 failed: {exc} {err.decode()[-400:]}") from exc
    return results
