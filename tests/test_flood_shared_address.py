"""Issue 19, "Handshake floods, again": a client that shares its address with a flooder (one
NAT) must still make a new handshake while the flood lasts. The flood (valid mac1, no mac2)
comes from the client's own namespace, so from its address; the client re-creates its peer
and must get a handshake and a ping through within a few seconds. wireguard-go as the
gateway: 5.3 s (a cookie reply, then the retry with mac2 after REKEY_TIMEOUT)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from testbed.addresses import LISTEN_PORT, RESOURCE_NET, TUNNEL_NET
from testbed.gateways import FirezoneGateway
from testbed.topology import topology

pytestmark = pytest.mark.netns

ROOT = Path(__file__).resolve().parent.parent
RATE = 5000  # initiations a second: far over the gateway's under-load threshold (128/s)
FLOOD_SECONDS = 30.0
WITHIN = 12.0  # REKEY_TIMEOUT (5 s) + jitter for the retry with the cookie, and slack


def test_a_client_behind_a_flooders_address_handshakes_during_the_flood() -> None:
    with topology(FirezoneGateway(workers=1), clients=1, iperf=False) as topo:
        spec, client = topo.client_specs[0], topo.clients[0]
        gateway_key = topo.backend.public_key
        flooder = topo.client_ns(0).popen(
            sys.executable,
            "-m",
            "testbed.flood",
            spec.gateway_underlay_addr,
            str(LISTEN_PORT),
            gateway_key,
            str(RATE),
            str(FLOOD_SECONDS),
            stdout=subprocess.PIPE,
            cwd=str(ROOT),
        )
        try:
            time.sleep(2.0)  # the gateway is under load
            before = topo.backend.stats().snapshot(peer_limit=0).totals.cookie_replies_sent
            client.set("peer", gateway_key, "remove")  # the client starts over
            client.add_peer(
                gateway_key,
                allowed_ips=f"{TUNNEL_NET},{RESOURCE_NET}",
                endpoint=f"{spec.gateway_underlay_addr}:{LISTEN_PORT}",
            )
            start = time.monotonic()
            while not topo.ping(0, count=1):
                assert flooder.poll() is None, "the flood ended before the client got through"
                assert time.monotonic() - start < WITHIN, (
                    f"no handshake within {WITHIN} s of the client's new peer during the flood"
                )
            took = time.monotonic() - start
            assert flooder.poll() is None  # still flooding when the ping came back
            assert topo.ping(0, count=10, interval=0.1)  # and the session carries traffic
            cookies = topo.backend.stats().snapshot(peer_limit=0).totals.cookie_replies_sent
            print(
                f"handshake and ping {took:.1f} s after the client's new peer; "
                f"{cookies - before} cookie replies sent meanwhile"
            )
            assert cookies > before
        finally:
            flooder.kill()
            flooder.wait()
