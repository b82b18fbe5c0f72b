"""The test bed's topology carries traffic with either gateway, so `make bench` cannot rot."""

from __future__ import annotations

import pytest

from testbed.addresses import RESOURCE_ADDR
from testbed.gateways import BackendUnavailable, FirezoneGateway, WireGuardGoGateway
from testbed.iperf import run_iperf
from testbed.netns import run
from testbed.topology import topology

pytestmark = pytest.mark.netns


def _namespaces() -> str:
    return run(["ip", "netns", "list"])


def test_wireguard_go_gateway_forwards_ping_and_iperf_to_the_resource() -> None:
    backend = WireGuardGoGateway()
    with topology(backend, clients=1) as topo:
        client = topo.clients[0]
        # The client reaches the resource network only through its tunnel interface.
        assert f"dev {client.ifname}" in topo.client_ns(0).ip("route", "get", RESOURCE_ADDR)
        assert topo.ping(0, count=3)
        peer = client.peers()[backend.public_key]
        assert peer.latest_handshake > 0
        assert peer.rx_bytes > 0
        (result,) = run_iperf(topo, [0], [], 1, udp=False)
        assert result.bits_per_second > 0
        assert result.bytes > 0
        assert backend.pids()
        names = [topo.gateway_ns.name, topo.resource.name, topo.client_ns(0).name]
    remaining = _namespaces()
    assert not [n for n in names if n in remaining]


def test_firezone_gateway_that_exits_is_reported_not_crashed() -> None:
    backend = FirezoneGateway(2, "sh -c 'echo bad config {config} >&2; exit 3'")
    with pytest.raises(BackendUnavailable, match="exited with 3") as caught, topology(backend):
        pytest.fail("the topology must not become ready")
    assert "bad config" in str(caught.value)
    assert str(backend.config_path) in caught.value.log
