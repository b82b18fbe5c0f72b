"""Issue 22, "Crypto restart keeps sessions": `kill -9` of the crypto process while a
wireguard-go client is the only one talking (a ping every 50 ms). The successor continues
the client's session from the run-state memfd: no new handshake on the client, longest gap
between replies at most 1 s (before: 16 s, keepalive 10 s + rekey timeout 5 s, then a new
handshake)."""

from __future__ import annotations

import itertools
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest

from testbed.addresses import RESOURCE_ADDR, client_specs
from testbed.gateways import FirezoneGateway
from testbed.netns import wait_for
from testbed.topology import Topology

pytestmark = pytest.mark.netns

Lab = Topology[FirezoneGateway]
MAX_GAP = 1.0
_REPLY = re.compile(rb"^\[(\d+\.\d+)\] \d+ bytes from .*icmp_seq=(\d+)", re.MULTILINE)


@pytest.fixture
def lab() -> Iterator[Lab]:
    lab = Topology(FirezoneGateway(workers=1), client_specs(1))
    try:
        lab.backend.write_config([lab.peer(0)])
        lab.backend.launch(lab.gateway_ns)
        lab.backend.wait_ready()
        lab.connect_client(0)
        lab.wait_ping(0)
        yield lab
    finally:
        lab.close()


def _longest_gap(output: bytes, end: float) -> tuple[float, int]:
    """The longest time without a reply (ping -D timestamps) until `end` (wall clock), and
    how many replies came."""
    times = [float(m.group(1)) for m in _REPLY.finditer(output)]
    assert times, output[-500:]
    return max(b - a for a, b in itertools.pairwise([*times, end])), len(times)


def test_a_killed_crypto_process_keeps_the_clients_session(lab: Lab) -> None:
    client = lab.clients[0]
    gateway_key = lab.backend.public_key
    handshake = client.peers()[gateway_key].latest_handshake
    assert handshake > 0
    ping = subprocess.Popen(
        client.ns.exec_argv("ping", "-D", "-i", "0.05", "-W", "1", "-w", "10", RESOURCE_ADDR),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(2)
        old = lab.backend.child_pid("crypto")
        os.kill(old, signal.SIGKILL)
        wait_for(lambda: lab.backend.child_pid("crypto") not in (0, old), timeout=10)
        time.sleep(6)
        end = time.time()
        ping.send_signal(signal.SIGINT)
        output, _ = ping.communicate(timeout=30)
    finally:
        if ping.poll() is None:
            ping.kill()
            ping.wait()
    gap, replies = _longest_gap(output, end)
    print(f"longest gap between replies {gap:.2f} s ({replies} replies)")
    assert f"crypto (pid {old}) died" in lab.backend.log_text()
    assert "restored 1 sessions" in lab.backend.log_text()
    assert client.peers()[gateway_key].latest_handshake == handshake  # no new handshake
    assert gap <= MAX_GAP
