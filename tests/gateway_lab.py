"""The lab of the supervision tests: the real `firezone-gw` (2 workers) between one
wireguard-go client and a resource host, and a client-only ping every 50 ms measured for
its longest gap while something happens to the gateway (issue 22)."""

from __future__ import annotations

import itertools
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping

from testbed.addresses import RESOURCE_ADDR, client_specs
from testbed.gateways import FirezoneGateway
from testbed.topology import Topology

Lab = Topology[FirezoneGateway]

ROLES = ("worker0", "worker1", "crypto", "udp")
MAX_GAP = 1.0  # seconds without a reply a kept session may cost (issue 22)
_REPLY = re.compile(rb"^\[(\d+\.\d+)\] \d+ bytes from .*icmp_seq=(\d+)", re.MULTILINE)


def open_lab(env: Mapping[str, str] | None = None) -> Iterator[Lab]:
    """For a fixture: the gateway running (with `env` added), the client's ping through it
    answered."""
    lab = Topology(FirezoneGateway(workers=2), client_specs(1))
    try:
        lab.backend.write_config([lab.peer(0)])
        lab.backend.launch(lab.gateway_ns, env=env)
        lab.backend.wait_ready()
        lab.connect_client(0)
        lab.wait_ping(0)
        yield lab
    finally:
        lab.close()


def longest_gap(output: bytes, end: float) -> tuple[float, int]:
    """The longest time without a reply (ping -D timestamps) until `end` (wall clock), and
    how many replies came."""
    times = [float(m.group(1)) for m in _REPLY.finditer(output)]
    assert times, output[-500:]
    return max(b - a for a, b in itertools.pairwise([*times, end])), len(times)


def ping_during(lab: Lab, action: Callable[[], object], after: float) -> tuple[float, int]:
    """The client pings every 50 ms; `action()` 2 s in, then `after` seconds more.
    (longest gap, replies)."""
    ping = subprocess.Popen(
        lab.clients[0].ns.exec_argv(
            "ping", "-D", "-i", "0.05", "-W", "1", "-w", "60", RESOURCE_ADDR
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(2)
        action()
        time.sleep(after)
        end = time.time()
        ping.send_signal(signal.SIGINT)
        output, _ = ping.communicate(timeout=30)
    finally:
        if ping.poll() is None:
            ping.kill()
            ping.wait()
    return longest_gap(output, end)
