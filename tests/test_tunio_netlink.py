"""TunDeviceManager against real devices in a namespace: state read back with iproute2."""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import pwd
from collections.abc import Iterator
from typing import Any

import pytest

from testbed.netns import Hosts, NetNS, unique_name
from tunio import NetlinkError, TunDeviceManager, TunError, TunQueue, open_multiqueue

pytestmark = pytest.mark.netns

V4 = ipaddress.IPv4Interface("10.252.0.1/24")
V6 = ipaddress.IPv6Interface("fd00:fe74::1/64")
ROUTES = (ipaddress.IPv4Network("10.253.0.0/16"), ipaddress.IPv6Network("fd00:fe75::/48"))


@pytest.fixture
def device(netns_hosts: Hosts) -> Iterator[tuple[NetNS, TunDeviceManager]]:
    ns = netns_hosts.add("fzt4")
    name = unique_name("fzt4tun")
    queues: list[TunQueue] = open_multiqueue(name, 2, netns=ns.name)
    try:
        yield ns, TunDeviceManager(name, netns=ns.name)
    finally:
        for queue in queues:
            queue.close()


def link(ns: NetNS, name: str) -> dict[str, Any]:
    (info,) = json.loads(ns.ip("-j", "-d", "link", "show", name))
    return dict(info)


def addresses(ns: NetNS, name: str) -> set[str]:
    (info,) = json.loads(ns.ip("-j", "addr", "show", name))
    return {f"{a['local']}/{a['prefixlen']}" for a in info["addr_info"] if a["scope"] == "global"}


def routes(ns: NetNS, name: str) -> set[str]:
    out = ns.ip("-j", "route", "show", "dev", name) + ns.ip(
        "-6", "-j", "route", "show", "dev", name
    )
    return {r["dst"] for chunk in out.replace("][", "]\n[").splitlines() for r in json.loads(chunk)}


def test_configure_sets_everything_and_is_idempotent(
    device: tuple[NetNS, TunDeviceManager],
) -> None:
    ns, manager = device
    for _ in range(2):
        manager.configure(1280, [V4, V6], ROUTES)
    info = link(ns, manager.name)
    assert info["mtu"] == 1280
    assert info["txqlen"] == 10000
    assert "UP" in info["flags"]
    assert "ifalias" not in info  # an alias line would shift `ip -stats link show`
    assert info["linkinfo"]["info_data"]["user"] == pwd.getpwuid(os.geteuid()).pw_name
    assert info["linkinfo"]["info_data"]["multi_queue"] is True
    assert addresses(ns, manager.name) == {str(V4), str(V6)}
    assert {str(r) for r in ROUTES} <= routes(ns, manager.name)
    assert manager.ifindex == info["ifindex"]


def test_configure_accepts_client_mtu_and_custom_txqueuelen(
    device: tuple[NetNS, TunDeviceManager],
) -> None:
    ns, manager = device
    manager.configure(1420, [V4], txqueuelen=2000)
    info = link(ns, manager.name)
    assert (info["mtu"], info["txqlen"]) == (1420, 2000)


def test_ipv6_disabled_warns_and_keeps_ipv4(
    device: tuple[NetNS, TunDeviceManager], caplog: pytest.LogCaptureFixture
) -> None:
    ns, manager = device
    ns.run("sysctl", "-qw", f"net.ipv6.conf.{manager.name}.disable_ipv6=1")
    with caplog.at_level(logging.WARNING, logger="tunio.netlink"):
        manager.configure(1280, [V6, V4], ROUTES)
    assert any("IPv6 is disabled" in r.getMessage() for r in caplog.records)
    assert addresses(ns, manager.name) == {str(V4)}
    assert str(ROUTES[0]) in routes(ns, manager.name)


def test_invalid_settings_are_refused_with_the_device_named(
    device: tuple[NetNS, TunDeviceManager],
) -> None:
    _, manager = device
    with pytest.raises(TunError, match=f"MTU 1000 for {manager.name}.*IPv6"):
        manager.configure(1000, [V6])
    with pytest.raises(TunError, match="outside"):
        manager.configure(70000, [V4])
    with pytest.raises(TunError, match="txqueuelen"):
        manager.configure(1280, [V4], txqueuelen=0)
    with pytest.raises(TunError, match="invalid interface name"):
        TunDeviceManager("x" * 16)


def test_delete_removes_device_and_is_idempotent(device: tuple[NetNS, TunDeviceManager]) -> None:
    ns, manager = device
    manager.configure(1280, [V4], ROUTES[:1])
    assert manager.exists()
    manager.delete()
    manager.delete()
    assert not manager.exists()
    assert manager.name not in ns.ip("link", "show")
    with pytest.raises(TunError, match=f"{manager.name} in netns {ns.name} does not exist"):
        manager.up()


def test_missing_namespace_is_a_clear_error() -> None:
    missing = unique_name("fzt4gone")
    expected = f"looking up device fzt4x in netns {missing}: network namespace '{missing}'"
    with pytest.raises(NetlinkError, match=expected):
        TunDeviceManager("fzt4x", netns=missing).exists()
    with pytest.raises(TunError, match=missing):
        open_multiqueue("fzt4x", 1, netns=missing)
