"""One peer spraying NAT flows costs another peer nothing (issue 19), in network namespaces.

The real `firezone-gw` between two wireguard-go clients, both granted the DNS resource
`app.corp.test` (an IPv4-only host: the resource namespace). Client A sends UDP from 22,000
source ports to three ports of its IPv4 proxy address (66,000 new NAT flows, more than the
whole table), nothing answers them; then, while A keeps sending from those ports to its IPv6
proxy (NAT64 to the same host: each flow's port is taken toward it), client B pings its
proxy address and opens new UDP flows through it. Before the fix the table filled (B's new
flows were refused) and each NAT64 flow scanned for a free port.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed.addresses import RESOURCE_ADDR
from testbed.netns import wait_for
from tests.dns_lab import Lab, ask, dns_lab

E2E_UDP = Path(__file__).resolve().parent / "e2e_udp.py"
ECHO_PORT = 7007  # B's flows: echoed by the resource
SPRAY_PORTS = "9001,9002,9003"  # nothing listens: A's flows stay unanswered
FIRST_SOURCE_PORT = 2000  # below the ephemeral ports: nothing else binds them
SOURCE_PORTS = 22000  # x 3 ports: 66,000 flows, more than the whole table
SPRAY_RATE = 8000  # datagrams a second
NAT64_SECONDS = 8
PINGS = 40
NEW_FLOWS = 20

# A's spray: from each source port, one datagram to each destination port, paced.
SPRAY = """
import socket, sys, time
proxy, first, count, rate = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[5])
ports = [int(p) for p in sys.argv[4].split(",")]
family = socket.AF_INET6 if ":" in proxy else socket.AF_INET
deadline = time.monotonic() + float(sys.argv[6]) if len(sys.argv) > 6 else None
start, sent, i = time.monotonic(), 0, 0
while True:
    if deadline is None and i == count or deadline is not None and time.monotonic() > deadline:
        break
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("", first + i % count))
    for port in ports:
        s.sendto(b"spray", (proxy, port))
    s.close()
    sent, i = sent + len(ports), i + 1
    ahead = sent / rate - (time.monotonic() - start)
    if ahead > 0:
        time.sleep(ahead)
print(sent)
"""
# B's new flows: a fresh socket (a new source port, a new NAT entry) each, answered or not.
NEW_FLOWS_SCRIPT = """
import json, socket, sys, time
dest, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
answered, rtts = 0, []
for i in range(count):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(2)
    sent = time.monotonic()
    s.sendto(b"%08d" % i, (dest, port))
    try:
        s.recvfrom(100)
        answered += 1
        rtts.append(time.monotonic() - sent)
    except OSError:
        pass
    s.close()
    time.sleep(0.1)
print(json.dumps({"answered": answered, "max_rtt": max(rtts, default=None)}))
"""


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with dns_lab([["app"], ["app"]]) as topo:
        echo = topo.resource.popen(
            sys.executable, str(E2E_UDP), "server", "--bind", RESOURCE_ADDR,
            "--port", str(ECHO_PORT),
        )  # fmt: skip
        try:
            yield topo
        finally:
            echo.kill()
            echo.wait()


def b_pings(lab: Lab, dest: str, count: int) -> subprocess.Popen[bytes]:
    argv = ["ping", "-c", str(count), "-i", "0.1", "-W", "1", "-q", dest]
    return subprocess.Popen(lab.client_ns(1).exec_argv(*argv), stdout=subprocess.PIPE)


def received(ping: subprocess.Popen[bytes]) -> int:
    out, _ = ping.communicate(timeout=60)
    found = re.search(rb"(\d+) received", out)
    assert found, out
    return int(found.group(1))


def b_new_flows(lab: Lab, dest: str) -> dict[str, float]:
    out = lab.client_ns(1).run(
        sys.executable, "-c", NEW_FLOWS_SCRIPT, dest, str(ECHO_PORT), str(NEW_FLOWS), timeout=90
    )
    result: dict[str, float] = json.loads(out)
    return result


def nat_counter(lab: Lab, name: str) -> int:
    found = re.search(rf"^firezone_gw_nat_{name} (\d+)$", lab.backend.metrics_text(), re.M)
    return int(found.group(1)) if found else -1


def wait_drained(lab: Lab, timeout: float = 60) -> None:
    """Until the gateway has decided every datagram of the spray it will get: its socket
    buffer holds tens of thousands, more than a loaded 2-core machine handles at once.
    (The NAT figures reach /metrics once a second.)"""
    names = ("translated_out_total", "refused_total", "dropped_total")
    deadline = time.monotonic() + timeout
    last = -1
    while time.monotonic() < deadline:
        now = sum(nat_counter(lab, name) for name in names)
        if now == last:
            return
        last = now
        time.sleep(1.5)
    raise AssertionError(f"the gateway still works through the spray after {timeout} s")


def test_b_is_unaffected_while_a_sprays_nat_flows(lab: Lab) -> None:
    (proxy_a,) = ask(lab, 0, "app.corp.test", "A")
    (proxy6_a,) = ask(lab, 0, "app.corp.test", "AAAA")
    (proxy_b,) = ask(lab, 1, "app.corp.test", "A")
    assert b_new_flows(lab, proxy_b)["answered"] == NEW_FLOWS  # the lab works
    baseline = received(b_pings(lab, proxy_b, 20))

    spray = [SPRAY, str(FIRST_SOURCE_PORT), str(SOURCE_PORTS), SPRAY_PORTS, str(SPRAY_RATE)]
    lab.client_ns(0).run(sys.executable, "-c", spray[0], proxy_a, *spray[1:], timeout=60)
    wait_drained(lab)
    # Then NAT64 from the same source ports to the IPv6 proxy, 20 new flows a second.
    nat64 = lab.client_ns(0).popen(
        sys.executable, "-c", SPRAY, proxy6_a, str(FIRST_SOURCE_PORT), str(SOURCE_PORTS),
        "9001", "20", str(NAT64_SECONDS), stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        ping = b_pings(lab, proxy_b, PINGS)
        flows = b_new_flows(lab, proxy_b)
        during = received(ping)
    finally:
        nat64.kill()
        nat64.wait()

    print(f"B: pings {baseline}/20 before, {during}/{PINGS} during; new flows {flows}")
    assert flows["answered"] >= NEW_FLOWS - 1, flows
    assert during >= PINGS * baseline / 20 - 4, (during, baseline)  # within noise
    # A really filled its share: the gateway evicted A's unanswered entries to make room.
    wait_for(lambda: nat_counter(lab, "evicted_total") > 0, timeout=5)
    assert 0 < nat_counter(lab, "entries") <= 65536 // 8 + 3 * NEW_FLOWS
