"""tunio.linkwatch: rtnetlink link messages in, the TUN device's MTU out.

The parsing tests feed datagrams built with pyroute2's own encoder (and broken ones); the
netns tests watch a real TUN device while `ip link` changes its MTU and moves it.
"""

from __future__ import annotations

import contextlib
import select
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pyroute2.netlink import NLM_F_REQUEST
from pyroute2.netlink.rtnl import (
    RTM_DELLINK,
    RTM_GETLINK,
    RTM_NEWADDR,
    RTM_NEWLINK,
    RTMGRP_LINK,
)
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

from testbed.netns import Hosts, unique_name
from tunio import open_multiqueue
from tunio._netns import entered_netns
from tunio.linkwatch import LinkEvent, LinkWatch, link_request, parse_link_events


def link_message(kind: int, ifindex: int, mtu: int | None = None) -> bytes:
    msg = ifinfmsg()
    msg["header"]["type"] = kind
    msg["index"] = ifindex
    msg["attrs"] = [("IFLA_IFNAME", "wg1")] + ([("IFLA_MTU", mtu)] if mtu is not None else [])
    msg.encode()
    return bytes(msg.data)


def address_message(ifindex: int) -> bytes:
    msg = ifaddrmsg()
    msg["header"]["type"] = RTM_NEWADDR
    msg["index"] = ifindex
    msg["family"] = 2
    msg["prefixlen"] = 24
    msg["attrs"] = [("IFA_ADDRESS", "10.0.0.1")]
    msg.encode()
    return bytes(msg.data)


def test_new_and_deleted_links_in_one_datagram() -> None:
    data = link_message(RTM_NEWLINK, 7, 9000) + address_message(7) + link_message(RTM_DELLINK, 7)
    assert parse_link_events(data) == [
        LinkEvent(7, 9000, removed=False),
        LinkEvent(7, None, removed=True),
    ]


def test_a_link_request_asks_for_one_device() -> None:
    request = ifinfmsg(link_request(42))
    request.decode()
    assert request["header"]["type"] == RTM_GETLINK
    assert request["header"]["flags"] == NLM_F_REQUEST  # no dump: only this device answers
    assert request["index"] == 42


@pytest.mark.parametrize(
    "data",
    [
        # a second message cut short after its header
        link_message(RTM_NEWLINK, 7, 9000) + link_message(RTM_NEWLINK, 8, 1500)[:20],
        b"\x14\0\0\0\x10\0" + bytes(14),  # a header claiming a body it does not have
    ],
    ids=["second-cut", "short-body"],
)
def test_malformed_datagrams_raise_value_error(data: bytes) -> None:
    with pytest.raises(ValueError, match="malformed rtnetlink datagram"):
        parse_link_events(data)


@pytest.mark.parametrize(
    "data",
    [b"", bytes(16), b"\xff" * 40, link_message(RTM_NEWLINK, 7, 9000)[:30]],
    ids=["empty", "zero-length", "too-long", "truncated"],
)
def test_datagrams_without_messages_give_nothing(data: bytes) -> None:
    assert parse_link_events(data) == []


# ---- a real device ----------------------------------------------------------------------


def mtu_announced(watch: LinkWatch, expected: int, timeout: float = 10) -> bool:
    """Sleep in epoll on the watch's fd until it reports `expected` (or the deadline)."""
    with contextlib.closing(select.epoll()) as epoll:
        epoll.register(watch.fileno(), select.EPOLLIN)
        end = time.monotonic() + timeout
        while (left := end - time.monotonic()) > 0:
            if epoll.poll(left) and watch.read() == expected:
                return True
    return False


@pytest.mark.netns
def test_follows_mtu_changes_and_the_device_into_another_namespace(netns_hosts: Hosts) -> None:
    home = netns_hosts.add("fzmtu")
    name = unique_name("fzmtu")
    (queue,) = open_multiqueue(name, 1, netns=home.name)
    watch = LinkWatch(queue.fileno())
    try:
        assert watch.following
        assert mtu_announced(watch, 1500)  # its answer to the request made on subscribing
        home.ip("link", "set", name, "mtu", "9000")
        assert mtu_announced(watch, 9000)
        away = netns_hosts.add("fzmtu")
        home.ip("link", "set", name, "netns", away.name)
        assert mtu_announced(watch, 9000)  # re-subscribed over there, asked again
        away.ip("link", "set", name, "mtu", "1380")
        assert mtu_announced(watch, 1380)
        away.ip("link", "del", name)
        assert not mtu_announced(watch, 1380, timeout=1)
        assert not watch.following
    finally:
        watch.close()
        queue.close()


@pytest.mark.netns
def test_link_messages_not_sent_by_the_kernel_are_ignored(netns_hosts: Hosts) -> None:
    home = netns_hosts.add("fzmtu")
    name = unique_name("fzmtu")
    (queue,) = open_multiqueue(name, 1, netns=home.name)
    watch = LinkWatch(queue.fileno())
    try:
        assert mtu_announced(watch, 1500)
        # Another process of the namespace announces a made-up MTU to the link group.
        with entered_netns(home.name):
            forger = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        with forger:
            forger.bind((0, 0))
            forger.sendto(link_message(RTM_NEWLINK, watch.ifindex, 68), (0, RTMGRP_LINK))
        with contextlib.closing(select.epoll()) as epoll:
            epoll.register(watch.fileno(), select.EPOLLIN)
            assert epoll.poll(5)  # it did arrive
        assert watch.read() is None
        home.ip("link", "set", name, "mtu", "1400")
        assert mtu_announced(watch, 1400)  # and the real ones still count
    finally:
        watch.close()
        queue.close()


# The watch as the unit runs it: CAP_NET_ADMIN without CAP_SYS_ADMIN (setns is refused).
WATCH_WITHOUT_SYS_ADMIN = """
import select, sys
from tunio import open_multiqueue
from tunio.linkwatch import LinkWatch
with open("/proc/self/status") as status:
    caps = next(int(line.split()[1], 16) for line in status if line.startswith("CapEff"))
print("sys_admin" if caps & (1 << 21) else "no sys_admin", flush=True)
(queue,) = open_multiqueue(sys.argv[1], 1)
watch = LinkWatch(queue.fileno())
print("following" if watch.following else "not following", flush=True)
epoll = select.epoll()
epoll.register(watch.fileno(), select.EPOLLIN)
while epoll.poll(10):
    if (mtu := watch.read()) is not None:
        print(mtu, flush=True)
"""


@pytest.mark.netns
def test_follows_the_mtu_without_cap_sys_admin(netns_hosts: Hosts) -> None:
    """In the process's own namespace the watch needs no setns (the unit forbids it)."""
    home = netns_hosts.add("fzmtu")
    name = unique_name("fzmtu")
    proc = home.popen(
        "setpriv",
        "--bounding-set=-all,+net_admin",
        "--inh-caps=-all",
        sys.executable,
        "-c",
        WATCH_WITHOUT_SYS_ADMIN,
        name,
        stdout=subprocess.PIPE,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert proc.stdout is not None
    lines = iter(proc.stdout.readline, b"")
    assert next(lines).strip() == b"no sys_admin"
    assert next(lines).strip() == b"following"
    assert next(lines).strip() == b"1500"  # the answer to its request
    home.ip("link", "set", name, "mtu", "1400")
    assert next(lines).strip() == b"1400"
