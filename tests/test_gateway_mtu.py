"""The gateway follows MTU changes made outside it (`ip link set DEV mtu N`), as wireguard-go
does: it logs the change once, pads to the new MTU and reports it in `show` and /metrics.

End to end in network namespaces: the real `firezone-gw` between a wireguard-go client and a
resource host (testbed.topology, as in test_gateway_ops.py).
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
from collections.abc import Iterator

import pytest

from testbed.addresses import GATEWAY_ADDRESSES, RESOURCE_ADDR
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


def peer_tx(lab: Lab) -> tuple[float, float]:
    """Bytes and datagrams sent to the client (copied from the crypto process together)."""
    labels = {"device": lab.backend.ifname, "public_key": lab.clients[0].public_key}
    samples = scrape(lab)
    return (
        value(samples, "wireguard_peer_transmit_bytes_total", **labels),
        value(samples, "wireguard_peer_transmit_packets_total", **labels),
    )


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
    # 16 (1392) now; under the old MTU 1280 it would have gone out unpadded (1380). One ping
    # at a time, counting only samples in which nothing else went to the client; the MTU
    # reaches the crypto process asynchronously (as netlink reaches wireguard-go), so the
    # check is that pings are padded once it has, within a few tries.
    samples = []
    for _ in range(10):
        bytes_before, packets_before = peer_tx(lab1)
        ping = lab1.gateway_ns.run(
            "ping", "-c", "1", "-W", "2", "-M", "do", "-s", "1352", CLIENT, check=False
        )
        assert " 0% packet loss" in ping, ping
        wait_for(lambda before=packets_before: peer_tx(lab1)[1] > before, timeout=10)
        sent_bytes, sent_packets = peer_tx(lab1)
        if sent_packets - packets_before == 1:
            samples.append(sent_bytes - bytes_before - TRANSPORT_OVERHEAD)
            if samples[-1] == 1392:
                break
    assert samples and samples[-1] == 1392, samples
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


# ---- jumbo frames through the gateway ------------------------------------------------------

JUMBO = 9000
UNDERLAY_MTU = 9100  # the veths carry whole 9000-byte packets and their WireGuard datagrams


def iperf3_bytes(lab: Lab, *args: str) -> int:
    """Bytes the receiving side of a 3 s TCP iperf3 run from the client got."""
    argv = lab.clients[0].ns.exec_argv(
        "iperf3", "-c", RESOURCE_ADDR, "-t", "3", "--connect-timeout", "5000", "-J", *args
    )
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=90, check=False)
    except subprocess.TimeoutExpired as exc:
        log = lab.backend.log_text()
        raise AssertionError(f"iperf3 {args} stalled; gateway log:\n{log}") from exc
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr
    return int(json.loads(proc.stdout)["end"]["sum_received"]["bytes"])


def test_tcp_both_ways_after_the_mtu_is_raised_to_9000_with_ip_link(lab1: Lab) -> None:
    started(lab1)
    for ns in (lab1.gateway_ns, lab1.resource, lab1.clients[0].ns):
        links = ns.ip("-o", "link", "show", "type", "veth")
        for veth_name in re.findall(r"^\d+: ([^:@]+)", links, re.MULTILINE):
            ns.ip("link", "set", veth_name, "mtu", str(UNDERLAY_MTU))
    client = lab1.clients[0]
    client.ns.ip("link", "set", client.ifname, "mtu", str(JUMBO))
    lab1.gateway_ns.ip("link", "set", lab1.backend.ifname, "mtu", str(JUMBO))
    wait_for(lambda: f"MTU changed from 1280 to {JUMBO}" in lab1.backend.log_text(), timeout=10)
    lab1.resource.popen(
        "iperf3", "-s", "-B", RESOURCE_ADDR, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wait_for(lambda: ":5201" in lab1.resource.run("ss", "-Hltn", "sport = :5201"), timeout=10)
    before = scrape(lab1)
    assert iperf3_bytes(lab1) > 1_000_000  # upload: 9000-byte packets written to the TUN
    assert iperf3_bytes(lab1, "-R") > 1_000_000  # download: 9000-byte packets read from it
    after = scrape(lab1)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert value(after, "firezone_gw_drops_total", reason="too_big") == 0
    # Reads from the TUN are never merged: an average above 1500 bytes means jumbo packets.
    read = delta("firezone_gw_tun_bytes_total", direction="receive")
    assert read / delta("firezone_gw_tun_packets_total", direction="receive") > 1500
    assert value(after, "firezone_gw_child_restarts_total") == 0
