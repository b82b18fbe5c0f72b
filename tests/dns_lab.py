"""A running firezone-gw with DNS resources between wireguard-go clients, for namespace tests.

The resource namespace runs the upstream DNS server (tests/dns_upstream.py); each client
routes the tunnel, the resource networks and both proxy ranges through the gateway.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from gateway.resources.proxy_ranges import IPV4_RANGE, IPV6_RANGE
from testbed.addresses import (
    GATEWAY_TUNNEL_ADDR,
    RESOURCE_ADDR,
    RESOURCE_NET,
    RESOURCE_NET6,
    TUNNEL_NET,
    TUNNEL_NET6,
    client_specs,
)
from testbed.gateways import FirezoneGateway
from testbed.topology import Topology

UPSTREAM = Path(__file__).resolve().parent / "dns_upstream.py"
DNS_CONFIG = f"""
[dns]
port = 53
upstreams = ["{RESOURCE_ADDR}:53"]

[[resources]]
name = "app"
address = "app.corp.test"

[[resources]]
name = "v6app"
address = "v6only.corp.test"
"""
# Asks the gateway's DNS server through the tunnel: prints the answer's addresses as JSON.
ASK = """
import json, sys
import dns.message, dns.query
query = dns.message.make_query(sys.argv[1], sys.argv[2])
ask = dns.query.tcp if sys.argv[3] == "tcp" else dns.query.udp
response = ask(query, sys.argv[4], timeout=3)
print(json.dumps([item.to_text() for rrset in response.answer for item in rrset]))
"""

Lab = Topology[FirezoneGateway]


@contextmanager
def dns_lab(grants: Sequence[list[str] | None]) -> Iterator[Lab]:
    """The gateway (one worker) with DNS_CONFIG, client i granted `grants[i]`."""
    topo: Lab = Topology(FirezoneGateway(workers=1), client_specs(len(grants)))
    try:
        upstream = topo.resource.popen(
            sys.executable, str(UPSTREAM), RESOURCE_ADDR, "53", stdout=subprocess.PIPE
        )
        assert upstream.stdout is not None and upstream.stdout.readline() == b"ready\n"
        peers = [
            dataclasses.replace(topo.peer(i), resources=names) for i, names in enumerate(grants)
        ]
        topo.backend.write_config(peers, extra_toml=DNS_CONFIG)
        topo.backend.launch(topo.gateway_ns)
        topo.backend.wait_ready()
        for index in range(len(grants)):
            topo.connect_client(index)
            wg = topo.clients[index]
            routed = (TUNNEL_NET, RESOURCE_NET, TUNNEL_NET6, RESOURCE_NET6)
            ranges = (str(IPV4_RANGE), str(IPV6_RANGE))
            wg.set("peer", topo.backend.public_key, "allowed-ips", ",".join(routed + ranges))
            wg.ns.ip("route", "add", str(IPV4_RANGE), "dev", wg.ifname)
            wg.ns.ip("-6", "route", "add", str(IPV6_RANGE), "dev", wg.ifname)
            topo.wait_ping(index, dest=GATEWAY_TUNNEL_ADDR)
        yield topo
    finally:
        topo.close()


def ask(
    lab: Lab,
    client: int,
    name: str,
    kind: str,
    transport: str = "udp",
    *,
    server: str = GATEWAY_TUNNEL_ADDR,
) -> list[str]:
    out = lab.client_ns(client).run(sys.executable, "-c", ASK, name, kind, transport, server)
    result: list[str] = json.loads(out)
    return result
