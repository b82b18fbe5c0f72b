"""End to end: resources and grants enforced by the real `firezone-gw` on stock wireguard-go
clients (namespaces from testbed/). What a client sees is what the kernel makes of the
gateway's ICMP errors: connect() failing with "No route to host", ping printing the filter.

Resource side (one namespace, several addresses on its loopback):
    db   10.88.0.2/32     tcp 5201-5208 (the iperf3 servers)   granted to clients 0 and 1
    web  10.88.0.3/32     every protocol                       granted to client 1 only
    v6   fd00:88::2/128   icmp                                 granted to clients 0 and 1
    10.88.0.4             in no resource (the return-path test's stray sender)

Timing asserts are about behaviour (an error arrives instead of a TCP timeout; a reload
applies within a second), never about speed.
"""

from __future__ import annotations

import errno
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from testbed.addresses import GATEWAY_TUNNEL_ADDR, RESOURCE_ADDR, RESOURCE_ADDR6, client_specs
from testbed.gateway_config import GatewayPeer
from testbed.gateways import FirezoneGateway
from testbed.iperf import run_iperf
from testbed.netns import NetNS, wait_for
from testbed.topology import Topology

pytestmark = pytest.mark.netns

WEB_ADDR = "10.88.0.3"
STRAY_ADDR = "10.88.0.4"
IPERF_PORT = 5201
NOT_LISTED_PORT = 22
# A prohibited connect fails when the ICMP error arrives; a dropped SYN would take > 60 s.
PROMPT_FAILURE = 3.0
RELOAD_APPLIED = 1.0  # the issue: a new grant works within a second of the reload
RESOURCES = f"""
[[resources]]
name = "db"
address = "{RESOURCE_ADDR}/32"
filters = [{{ protocol = "tcp", ports = "5201-5208" }}]

[[resources]]
name = "web"
address = "{WEB_ADDR}/32"

[[resources]]
name = "v6"
address = "{RESOURCE_ADDR6}/128"
filters = [{{ protocol = "icmp" }}]
"""
GRANTS = {0: ["db", "v6"], 1: ["db", "web", "v6"]}

CONNECT = """
import json, socket, sys, time
family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(family, socket.SOCK_STREAM)
s.settimeout(20)
start = time.monotonic()
try:
    s.connect((sys.argv[1], int(sys.argv[2])))
    error = 0
except OSError as exc:
    error = exc.errno or -1
print(json.dumps({"errno": error, "seconds": time.monotonic() - start}))
"""
RECEIVE = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.settimeout(float(sys.argv[2]))
got = []
try:
    while True:
        got.append(s.recvfrom(100)[1][0])
except TimeoutError:
    pass
print(" ".join(got))
"""
SEND = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
for _ in range(5):
    s.sendto(b"unsolicited", (sys.argv[3], int(sys.argv[4])))
"""

Lab = Topology[FirezoneGateway]


def _peers(lab: Lab, grants: dict[int, list[str]]) -> list[GatewayPeer]:
    return [
        GatewayPeer(spec.public_key, spec.allowed_ips, resources=grants[spec.index])
        for spec in lab.client_specs
    ]


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    topo = Topology(FirezoneGateway(workers=2), client_specs(2))
    try:
        for address in (WEB_ADDR, STRAY_ADDR):
            topo.resource.ip("addr", "add", f"{address}/32", "dev", "lo")
        topo.backend.write_config(_peers(topo, GRANTS), extra_toml=RESOURCES)
        topo.backend.launch(topo.gateway_ns)
        topo.backend.wait_ready()
        for index in range(len(topo.clients)):
            topo.connect_client(index)
            # The gateway's own tunnel address is always reachable: the handshake's trigger.
            topo.wait_ping(index, dest=GATEWAY_TUNNEL_ADDR)
        topo.start_iperf_servers()
        yield topo
    finally:
        topo.close()


def _connect(ns: NetNS, address: str, port: int) -> tuple[int, float]:
    out = ns.run(sys.executable, "-c", CONNECT, address, str(port), timeout=40)
    result = json.loads(out)
    return int(result["errno"]), float(result["seconds"])


def _ping_output(ns: NetNS, address: str, count: int = 2) -> tuple[int, str]:
    argv = ns.exec_argv("ping", "-c", str(count), "-i", "0.2", "-W", "1", address)
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=30)
    return proc.returncode, proc.stdout + proc.stderr


def _icmp_echoes_received(ns: NetNS, version: int = 4) -> int:
    """Echo requests the resource's kernel received (its namespace's SNMP counters)."""
    snmp = ns.run("cat", "/proc/net/snmp" if version == 4 else "/proc/net/snmp6")
    if version == 4:
        names, values = [line.split() for line in snmp.splitlines() if line.startswith("Icmp:")]
        return int(values[names.index("InEchos")])
    counters = dict(line.split() for line in snmp.splitlines() if line.strip())
    return int(counters["Icmp6InEchos"])


def test_a_granted_tcp_port_carries_iperf3(lab: Lab) -> None:
    lab.wait_iperf_idle()
    (result,) = run_iperf(lab, [0], [], 2, udp=False)
    assert result.bytes > 0


def test_a_port_not_listed_fails_at_once_with_no_route_to_host(lab: Lab) -> None:
    error, seconds = _connect(lab.client_ns(0), RESOURCE_ADDR, NOT_LISTED_PORT)
    assert error == errno.EHOSTUNREACH, errno.errorcode.get(error, error)
    assert seconds < PROMPT_FAILURE


def test_ping_to_a_tcp_only_resource_reports_the_filter_and_reaches_nothing(lab: Lab) -> None:
    before = _icmp_echoes_received(lab.resource)
    code, output = _ping_output(lab.client_ns(0), RESOURCE_ADDR)
    assert code != 0
    assert "Packet filtered" in output, output  # iputils' text for type 3 code 13
    assert _icmp_echoes_received(lab.resource) == before


def test_a_resource_not_granted_is_prohibited_and_works_for_the_peer_granted_it(
    lab: Lab,
) -> None:
    code, output = _ping_output(lab.client_ns(0), WEB_ADDR)
    assert code != 0
    assert "Packet filtered" in output, output
    assert lab.ping(1, dest=WEB_ADDR, count=2)


def test_an_ipv6_resource_with_an_icmp_filter_pings_and_refuses_tcp(lab: Lab) -> None:
    assert lab.ping(0, dest=RESOURCE_ADDR6, count=2)
    error, seconds = _connect(lab.client_ns(0), RESOURCE_ADDR6, IPERF_PORT)
    # Linux maps ICMPv6 "administratively prohibited" to EACCES (IPv4's code 13: EHOSTUNREACH).
    assert error == errno.EACCES, errno.errorcode.get(error, error)
    assert seconds < PROMPT_FAILURE


def test_unsolicited_packets_from_outside_the_grants_get_nothing_through(lab: Lab) -> None:
    """The resource host sends to each client's tunnel address from an address outside the
    client's grants; client 1, granted `web`, shows the same send arrives when allowed."""
    port = 40123
    listeners = [
        subprocess.Popen(
            lab.client_ns(i).exec_argv(sys.executable, "-c", RECEIVE, str(port), "3"),
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in (0, 1)
    ]
    try:
        wait_for(
            lambda: all(f":{port} " in lab.client_ns(i).run("ss", "-Hlun") for i in (0, 1)),
            timeout=10,
        )
        client0, client1 = (spec.tunnel_addr for spec in lab.client_specs)
        for source, destination in (
            (STRAY_ADDR, client0),  # in no resource
            (WEB_ADDR, client0),  # a resource client 0 is not granted
            (RESOURCE_ADDR, client0),  # granted, but UDP is not in its filter
            (WEB_ADDR, client1),  # granted to client 1, every protocol: arrives
        ):
            lab.resource.run(sys.executable, "-c", SEND, source, "5353", destination, str(port))
        outputs = [proc.communicate(timeout=20)[0].split() for proc in listeners]
    finally:
        for proc in listeners:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert outputs[0] == []
    assert outputs[1] == [WEB_ADDR] * 5


def test_sighup_adding_a_grant_applies_within_a_second_without_a_handshake(lab: Lab) -> None:
    backend = lab.backend
    assert not lab.ping(0, dest=WEB_ADDR, count=1)
    handshake = lab.clients[0].peers()[backend.public_key].latest_handshake
    assert handshake > 0
    reloads = backend.log_text().count("reload:")
    try:
        backend.write_config(_peers(lab, {**GRANTS, 0: ["db", "web", "v6"]}), extra_toml=RESOURCES)
        backend.signal(signal.SIGHUP)
        wait_for(lambda: backend.log_text().count("reload:") > reloads, timeout=5)
        applied = time.monotonic()
        wait_for(lambda: lab.ping(0, dest=WEB_ADDR, count=1), timeout=5, interval=0.05)
        assert time.monotonic() - applied < RELOAD_APPLIED
        assert lab.clients[0].peers()[backend.public_key].latest_handshake == handshake
    finally:
        backend.write_config(_peers(lab, GRANTS), extra_toml=RESOURCES)
        backend.signal(signal.SIGHUP)
        wait_for(lambda: backend.log_text().count("reload:") > reloads + 1, timeout=5)


def test_metrics_count_policy_drops_icmp_errors_and_each_resource(lab: Lab) -> None:
    _ping_output(lab.client_ns(0), RESOURCE_ADDR, count=1)  # one denied, one error at least
    lab.ping(1, dest=WEB_ADDR, count=1)

    def counted() -> bool:  # counters reach shared memory about once a second
        text = lab.backend.metrics_text()
        return _sample(text, 'firezone_gw_resource_denied_packets_total{resource="db"}') > 0

    wait_for(counted, timeout=5, interval=0.2)
    text = lab.backend.metrics_text()
    assert _sample(text, 'firezone_gw_drops_total{reason="policy"}') > 0
    assert _sample(text, "firezone_gw_icmp_errors_sent_total") > 0
    assert _sample(text, 'firezone_gw_resource_allowed_packets_total{resource="web"}') > 0
    assert _sample(text, 'firezone_gw_resource_allowed_bytes_total{resource="web"}') > 0


def _sample(text: str, series: str) -> float:
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name == series:
            return float(value)
    return 0.0
