"""Issue #15, netns.sh's reply-to-sender check: a client that writes to one of the gateway's
several addresses gets its replies from that address, so it keeps that endpoint.

wireguard-go roams to the source of every authenticated datagram, so `wg show endpoints` on
the client says which address the gateway answered from. Without sticky source addresses
the gateway answers from the kernel's choice (the link's first address) and the client's
endpoint moves there.
"""

from __future__ import annotations

import pytest

from testbed.addresses import LISTEN_PORT
from testbed.gateways import FirezoneGateway
from testbed.netns import NetNS
from testbed.topology import topology

pytestmark = pytest.mark.netns


def _link_with(ns: NetNS, address: str) -> str:
    """The name of the interface in `ns` that has `address`."""
    for line in ns.ip("-o", "addr", "show").splitlines():
        fields = line.split()
        if fields[3].split("/")[0] == address:
            return fields[1]
    raise AssertionError(f"no interface with {address}")


def test_replies_come_from_the_gateway_address_the_client_wrote_to() -> None:
    with topology(FirezoneGateway(1), clients=1, iperf=False) as topo:
        spec, client = topo.client_specs[0], topo.clients[0]
        gateway_key = topo.backend.public_key
        gateway_link = _link_with(topo.gateway_ns, spec.gateway_underlay_addr)
        client_link = _link_with(client.ns, spec.underlay_addr)
        # Second addresses on the gateway's side of the link, which the kernel never picks
        # as a source on its own: IPv4 outside the link's /30 (secondary to nothing), IPv6
        # deprecated (preferred_lft 0) next to a preferred one.
        topo.gateway_ns.ip("addr", "add", "198.18.15.2/32", "dev", gateway_link)
        client.ns.ip("route", "add", "198.18.15.2/32", "dev", client_link)
        for ns, link, address, extra in (
            (client.ns, client_link, "fd15::1/64", ()),
            (topo.gateway_ns, gateway_link, "fd15::2/64", ()),
            (topo.gateway_ns, gateway_link, "fd15::3/64", ("preferred_lft", "0")),
        ):
            ns.ip("addr", "add", address, "dev", link, "nodad", *extra)

        for endpoint in (
            f"198.18.15.2:{LISTEN_PORT}",  # IPv4, arriving v4-mapped on the dual-stack socket
            f"[fd15::3]:{LISTEN_PORT}",
            f"{spec.gateway_underlay_addr}:{LISTEN_PORT}",  # and back to the first address
        ):
            client.set("peer", gateway_key, "endpoint", endpoint)
            assert topo.ping(0, count=2), f"no reply through {endpoint}"
            assert client.peers()[gateway_key].endpoint == endpoint
