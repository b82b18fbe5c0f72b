"""Issue 19's DNS abuse, end to end: the real `firezone-gw` between two wireguard-go clients
and a resource namespace running the upstream (tests/dns_upstream.py, which never answers
names under `silent.test`).

Client 0 (A) keeps thousands of queries for names the upstream never answers in flight;
client 1 (B) asks ordinary names meanwhile and must get every answer. A host on the
gateway's LAN (the resource namespace, which routes to the tunnel addresses) must get no
answer at all, however it asks.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from testbed.addresses import GATEWAY_TUNNEL_ADDR
from testbed.netns import NetNS
from tests.dns_lab import Lab, dns_lab

FLOOD_SECONDS = 8.0
# A: sends `rate` new silent names a second to the gateway for `seconds`, never waiting.
FLOOD = """
import socket, sys, time
import dns.message
server, seconds, rate = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.setblocking(False)
end = time.monotonic() + seconds
sent = 0
while time.monotonic() < end:
    for _ in range(rate // 10):
        query = dns.message.make_query(f"n{sent}.silent.test", "A")
        sock.sendto(query.to_wire(), (server, 53))
        sent += 1
    time.sleep(0.1)
print(sent)
"""
# B (or the LAN host): asks each name once over UDP, prints how many got their address.
ASK_MANY = """
import json, sys
import dns.exception, dns.message, dns.query, dns.rcode
server, transport, names = sys.argv[1], sys.argv[2], sys.argv[3:]
ask = dns.query.tcp if transport == "tcp" else dns.query.udp
results = []
for name in names:
    try:
        reply = ask(dns.message.make_query(name, "A"), server, timeout=2)
        results.append(dns.rcode.to_text(reply.rcode()))
    except (dns.exception.Timeout, OSError) as exc:
        results.append(type(exc).__name__)
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with dns_lab([None, None]) as topo:  # no grants: ordinary names only
        yield topo


def ask_many(ns: NetNS, names: list[str], transport: str = "udp") -> list[str]:
    out = ns.run(sys.executable, "-c", ASK_MANY, GATEWAY_TUNNEL_ADDR, transport, *names)
    result: list[str] = json.loads(out)
    return result


def test_b_is_answered_while_a_holds_thousands_of_queries_unanswered(lab: Lab) -> None:
    flood = lab.client_ns(0).popen(
        sys.executable,
        "-c",
        FLOOD,
        GATEWAY_TUNNEL_ADDR,
        str(FLOOD_SECONDS),
        "1000",
        stdout=subprocess.PIPE,
    )
    try:
        time.sleep(2.5)  # A has sent 2,500 names the upstream never answers
        results = ask_many(lab.client_ns(1), ["www.corp.test"] * 20)
        results += ask_many(lab.client_ns(1), ["www.corp.test"] * 5, "tcp")
    finally:
        out, _ = flood.communicate(timeout=FLOOD_SECONDS + 10)
    assert int(out) >= 2000  # A really flooded
    assert results == ["NOERROR"] * 25, results


def test_a_host_on_the_lan_gets_no_answer(lab: Lab) -> None:
    """It routes to the tunnel addresses (the resource namespace does); the server answers
    only what came through the tunnel from a peer."""
    assert ask_many(lab.resource, ["www.corp.test"]) == ["Timeout"]
    assert ask_many(lab.resource, ["www.corp.test"], "tcp") != ["NOERROR"]
    time.sleep(5)  # A's queries have timed out
    assert ask_many(lab.client_ns(1), ["www.corp.test"]) == ["NOERROR"]  # the server is up
