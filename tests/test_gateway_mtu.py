"""The gateway follows MTU changes made outside it (`ip link set DEV mtu N`), as wireguard-go
does: it logs the change once, pads to the new MTU and reports it in `show` and /metrics.

End to end in network namespaces: the real `firezone-gw` between a wireguard-go client and a
resource host (testbed.topology, as in test_gateway_ops.py).
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator

import pytest

from testbed.addresses import GATEWAY_ADDRESSES
from testbed.netns import wait_for
from tests.test_gateway_ops import Lab, new_lab, scrape, show, started, value

pytestmark = pytest.mark.netns

CLIENT = "10.77.0.2"
TRANSPORT_OVERHEAD = 32  # WireGuard transport header (16) + AEAD tag (16)


@pytest.fixture
def lab1() -> Iterator[Lab]:
    lab = new_lab(1)
    try:
        yield lab
    finally:
        lab.close()


def peer_tx_bytes(lab: Lab) -> float:
    labels = {"device": lab.backend.ifname, "public_key": lab.clients[0].public_key}
    return value(scrape(lab), "wireguard_peer_transmit_bytes_total", **labels)


def test_mtu_set_with_ip_link_is_logged_once_reported_and_padded_to(lab1: Lab) -> None:
    started(lab1)
    assert "mtu: 1280" in show(lab1)
    lab1.gateway_ns.ip("link", "set", lab1.backend.ifname, "mtu", "9000")  # not through the config
    changed = f"{lab1.backend.ifname}: MTU changed from 1280 to 9000"
    wait_for(lambda: changed in lab1.backend.log_text(), timeout=10)
    # More link notifications with the same MTU are not news.
    lab1.gateway_ns.ip("link", "set", lab1.backend.ifname, "txqueuelen", "5000")
    lab1.gateway_ns.ip("link", "set", lab1.backend.ifname, "mtu", "9000")
    assert "  mtu: 9000\n" in show(lab1)
    assert json.loads(show(lab1, "--json"))["mtu"] == 9000
    assert value(scrape(lab1), "firezone_gw_tun_mtu_bytes") == 9000

    # The crypto process pads to the new MTU: a 1380-byte packet is padded to a multiple of
    # 16 (1392) now; under the old MTU 1280 it would have gone out unpadded (1380).
    before = peer_tx_bytes(lab1)
    ping = lab1.gateway_ns.run(
        "ping", "-c", "3", "-i", "0.1", "-W", "2", "-M", "do", "-s", "1352", CLIENT, check=False
    )
    assert " 0% packet loss" in ping, ping
    expected = before + 3 * (1392 + TRANSPORT_OVERHEAD)
    wait_for(lambda: peer_tx_bytes(lab1) == expected, timeout=5)  # counters copied each second
    assert lab1.backend.log_text().count("MTU changed") == 1
    assert value(scrape(lab1), "firezone_gw_child_restarts_total") == 0


def test_sighup_keeps_an_ip_link_mtu_unless_the_config_changes_it(lab1: Lab) -> None:
    started(lab1)
    lab1.gateway_ns.ip("link", "set", lab1.backend.ifname, "mtu", "1400")
    wait_for(lambda: "MTU changed from 1280 to 1400" in lab1.backend.log_text(), timeout=10)
    # Same config MTU (1280), one more address: the operator's MTU stays.
    extra = "10.77.9.1/24"
    lab1.backend.write_config([lab1.peer(0)], (*GATEWAY_ADDRESSES, extra))
    lab1.backend.signal(signal.SIGHUP)
    wait_for(lambda: "has MTU 1400 and 3 addresses" in lab1.backend.log_text(), timeout=10)
    assert "mtu 1400 " in lab1.gateway_ns.ip("-o", "link", "show", lab1.backend.ifname)
    # A new MTU in the config is applied, logged once and reported.
    lab1.backend.write_config([lab1.peer(0)], (*GATEWAY_ADDRESSES, extra), mtu=1380)
    lab1.backend.signal(signal.SIGHUP)
    wait_for(lambda: "has MTU 1380 and 3 addresses" in lab1.backend.log_text(), timeout=10)
    assert "mtu 1380 " in lab1.gateway_ns.ip("-o", "link", "show", lab1.backend.ifname)
    assert "  mtu: 1380\n" in show(lab1)
    assert lab1.backend.log_text().count("MTU changed from 1400 to 1380") == 1
    assert lab1.ping(0, count=2, interval=0.1)
