"""DNS and DNS resources in the running gateway, end to end in network namespaces.

The real `firezone-gw` (with its fzgw-dns process) between two wireguard-go clients and a
resource namespace, which also runs the upstream DNS server (tests/dns_upstream.py): client 0
is granted the DNS resource `app.corp.test`, client 1 is not. Queries go through the tunnel
to the gateway's tunnel address; packets to a proxy address are translated by the crypto
process to the real host (the resource namespace, IPv4 only).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest

from gateway.resources.proxy_ranges import IPV4_RANGE, IPV6_RANGE
from testbed.addresses import (
    GATEWAY_TUNNEL_ADDR6,
    RESOURCE_ADDR,
    RESOURCE_ADDR6,
)
from testbed.netns import wait_for
from tests.dns_lab import DNS_CONFIG, Lab, ask, dns_lab


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with dns_lab([["app", "v6app"], None]) as topo:
        yield topo


def test_a_granted_peer_resolves_the_resource_to_proxy_addresses(lab: Lab) -> None:
    (v4,) = ask(lab, 0, "app.corp.test", "A")
    (v6,) = ask(lab, 0, "app.corp.test", "AAAA")
    assert ipaddress.ip_address(v4) in IPV4_RANGE
    assert ipaddress.ip_address(v6) in IPV6_RANGE


def test_ping_and_tcp_to_the_ipv4_proxy_reach_the_real_host(lab: Lab) -> None:
    (proxy,) = ask(lab, 0, "app.corp.test", "A")
    assert lab.ping(0, dest=proxy, count=3)
    tcp_reaches(lab, proxy, RESOURCE_ADDR, 5301)


def test_ping6_and_tcp_to_the_ipv6_proxy_reach_the_ipv4_only_host_through_nat64(lab: Lab) -> None:
    (proxy,) = ask(lab, 0, "app.corp.test", "AAAA")
    assert lab.ping(0, dest=proxy, count=3)
    tcp_reaches(lab, proxy, RESOURCE_ADDR, 5302)


def test_ping_and_tcp_to_the_ipv4_proxy_reach_an_ipv6_only_host_through_nat46(lab: Lab) -> None:
    (proxy,) = ask(lab, 0, "v6only.corp.test", "A")
    assert ipaddress.ip_address(proxy) in IPV4_RANGE
    assert lab.ping(0, dest=proxy, count=3)
    tcp_reaches(lab, proxy, RESOURCE_ADDR6, 5303)


def tcp_reaches(lab: Lab, proxy: str, bind: str, port: int) -> None:
    """iperf3 for a second from client 0 to `proxy`; its server listens on the real `bind`."""
    server = lab.resource.popen("iperf3", "-s", "-1", "-B", bind, "-p", str(port))
    try:
        client = lab.client_ns(0).exec_argv(
            "iperf3", "-c", proxy, "-p", str(port), "-t", "1", "-J", "--connect-timeout", "3000"
        )
        for _ in range(50):  # until the one-shot server listens (refused: the RST came back)
            result = subprocess.run(client, capture_output=True, check=False, timeout=20)
            report = json.loads(result.stdout or b"{}")
            if result.returncode == 0 and "error" not in report:
                break
            time.sleep(0.1)
        assert report["end"]["sum_received"]["bytes"] > 0, result.stdout[-500:]
    finally:
        server.kill()
        server.wait()


def test_an_ordinary_name_is_forwarded_over_udp_and_tcp(lab: Lab) -> None:
    assert ask(lab, 0, "www.corp.test", "A", "udp") == ["192.0.2.7"]
    assert ask(lab, 0, "www.corp.test", "AAAA", "tcp") == ["2001:db8::7"]
    assert ask(lab, 1, "www.corp.test", "A", "tcp") == ["192.0.2.7"]
    # The server listens on every tunnel address: the IPv6 one too, both transports.
    for transport in ("udp", "tcp"):
        assert ask(lab, 0, "www.corp.test", "A", transport, server=GATEWAY_TUNNEL_ADDR6) == [
            "192.0.2.7"
        ]


def test_a_peer_not_granted_the_resource_gets_no_proxy_addresses(lab: Lab) -> None:
    assert ask(lab, 1, "app.corp.test", "A") == [RESOURCE_ADDR]  # forwarded as it is
    (proxy,) = ask(lab, 0, "app.corp.test", "A")
    assert not lab.ping(1, dest=proxy)  # and the proxy address refuses it


def test_dns_and_nat_counters_reach_metrics(lab: Lab) -> None:
    ask(lab, 0, "www.corp.test", "A")
    text = lab.backend.metrics_text()
    assert "firezone_gw_dns_queries_total" in text
    assert "firezone_gw_dns_proxy_mappings_total" in text
    # The tests before pinged proxy addresses: the crypto process counted translations.
    wait_for(
        lambda: "firezone_gw_nat_translated_out_total 0" not in lab.backend.metrics_text(),
        timeout=5,
    )
    assert "firezone_gw_nat_translated_in_total" in lab.backend.metrics_text()


def test_a_killed_dns_process_is_restarted_and_answers_again(lab: Lab) -> None:
    before = lab.backend.child_pid("dns")
    os.kill(before, signal.SIGKILL)
    wait_for(lambda: lab.backend.child_pid("dns") not in (0, before), timeout=15)
    lab.backend.wait_ready()
    (proxy,) = ask(lab, 0, "app.corp.test", "A")
    assert ipaddress.ip_address(proxy) in IPV4_RANGE
    assert lab.ping(0, dest=proxy, count=2)


def test_a_reload_that_grants_the_resource_gives_the_peer_proxy_addresses(lab: Lab) -> None:
    """Last in this module: it changes the grants the other tests rely on."""
    assert ask(lab, 1, "app.corp.test", "A") == [RESOURCE_ADDR]
    granted, newly = lab.peer(0), lab.peer(1)
    granted = dataclasses.replace(granted, resources=["app", "v6app"])
    newly = dataclasses.replace(newly, resources=["app"])
    lab.backend.write_config([granted, newly], extra_toml=DNS_CONFIG)
    before = lab.backend.child_pid("dns")
    lab.backend.signal(signal.SIGHUP)
    wait_for(lambda: lab.backend.child_pid("dns") not in (0, before), timeout=15)
    lab.backend.wait_ready()
    (proxy,) = ask(lab, 1, "app.corp.test", "A")
    assert ipaddress.ip_address(proxy) in IPV4_RANGE
    assert proxy == ask(lab, 0, "app.corp.test", "A")[0]  # the same pair as before
    assert lab.ping(1, dest=proxy, count=2)
