"""Follow a TUN device's MTU through rtnetlink link notifications, as wireguard-go does.

Layout: one NETLINK_ROUTE socket subscribed to RTMGRP_LINK in the network namespace where the
device lives now, kept inside a private epoll whose fd never changes: the owner adds that fd
to its own epoll once, and it becomes readable only when the kernel announces a link change
(idle means idle, no polling). The device is found through one of its TUN queue fds
(TUNGETIFF names it, TUNGETDEVNETNS opens its namespace), so a device moved to another
namespace is followed there: its RTM_DELLINK in the old namespace re-opens the socket in the
new one. Every (re)opened socket asks the kernel for the device's current state
(RTM_GETLINK), and so does a socket that lost notifications (ENOBUFS).

Ownership: the supervisor creates and reads it; forked children inherit the fds but never
read them. Crash behaviour: it keeps no state worth saving; a new watch starts from the
kernel's answer to its RTM_GETLINK.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import select
import socket
import struct
from dataclasses import dataclass

from pyroute2.netlink import NLM_F_REQUEST
from pyroute2.netlink.rtnl import RTM_DELLINK, RTM_GETLINK, RTM_NEWLINK, RTMGRP_LINK
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.marshal import MarshalRtnl

from tunio._netns import entered_netns_fd
from tunio.device_state import DEVICE_GONE_ERRNOS, queue_device_name

log = logging.getLogger(__name__)

TUNGETDEVNETNS = 0x54E3  # _IO('T', 227): an fd of the namespace the device lives in now
RECV_SIZE = 65536  # one RTM_NEWLINK is about 1.5 KiB; the kernel never sends more at once
MAX_DATAGRAMS = 64  # per read(): a storm of link changes cannot hold the owner's loop
KERNEL_PORT = 0  # netlink port id of the kernel: the only sender we believe about links


@dataclass(frozen=True, slots=True)
class LinkEvent:
    ifindex: int
    mtu: int | None  # None when the message carries no IFLA_MTU (e.g. RTM_DELLINK)
    removed: bool  # RTM_DELLINK: deleted, or moved to another namespace


def parse_link_events(data: bytes) -> list[LinkEvent]:
    """The link announcements (RTM_NEWLINK, RTM_DELLINK) in one rtnetlink datagram.

    Other message types are skipped; a datagram pyroute2 cannot decode raises ValueError.
    """
    events = []
    try:
        for msg in MarshalRtnl().parse(data):
            kind = msg["header"]["type"]
            if msg["header"].get("error") is not None or kind not in (RTM_NEWLINK, RTM_DELLINK):
                continue
            events.append(
                LinkEvent(int(msg["index"]), msg.get_attr("IFLA_MTU"), kind == RTM_DELLINK)
            )
    except (struct.error, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"malformed rtnetlink datagram ({len(data)} bytes): {exc}") from exc
    return events


def link_request(ifindex: int) -> bytes:
    """An RTM_GETLINK request for one device: the kernel answers with its RTM_NEWLINK."""
    msg = ifinfmsg()
    msg["header"]["type"] = RTM_GETLINK
    msg["header"]["flags"] = NLM_F_REQUEST
    msg["index"] = ifindex
    msg.encode()
    return bytes(msg.data)


class LinkWatch:
    """The MTU announcements of the TUN device that `tun_fd` (a queue) is attached to."""

    def __init__(self, tun_fd: int) -> None:
        """Subscribes at once; `following` says whether that worked (else a warning)."""
        self._tun_fd = tun_fd
        self._epoll = select.epoll()
        self._sock: socket.socket | None = None
        self.ifindex = 0  # in the namespace the socket listens in; 0 once not following
        self._subscribe()

    @property
    def following(self) -> bool:
        return self._sock is not None

    def fileno(self) -> int:
        """Readable when read() has something to do; the same fd for the watch's life."""
        return self._epoll.fileno()

    def read(self) -> int | None:
        """Take what arrived; the device's MTU as last announced, or None if nothing
        about it came (the owner compares with the MTU it knows)."""
        mtu = None
        for _ in range(MAX_DATAGRAMS):
            sock = self._sock
            if sock is None:
                break
            try:
                data, (sender, _groups) = sock.recvfrom(RECV_SIZE)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    log.warning("link notifications were lost: asking for the device's state")
                    self._request()
                else:  # never seen; a fresh socket is the way back
                    log.warning("reading link notifications: %s: subscribing again", exc)
                    self._subscribe()
                continue
            if sender != KERNEL_PORT:
                continue
            try:
                events = parse_link_events(data)
            except ValueError as exc:
                log.warning("%s: asking for the device's state", exc)
                self._request()
                continue
            for event in events:
                if event.ifindex != self.ifindex:
                    continue
                if event.removed:  # deleted, or moved: follow it if it still exists
                    self._subscribe()
                    break
                if event.mtu is not None:
                    mtu = event.mtu
        return mtu

    def close(self) -> None:
        self._close_socket()
        self._epoll.close()

    def _subscribe(self) -> None:
        """Listen in the namespace the device lives in now; stop once it was deleted or
        cannot be reached (logged: its MTU is then no longer followed)."""
        self._close_socket()
        try:
            found = self._open()
        except OSError as exc:
            log.warning("not following the TUN device's MTU any more: %s", exc)
            return
        if found is not None:
            self._sock, self.ifindex = found
            self._epoll.register(self._sock.fileno(), select.EPOLLIN)
            self._request()

    def _open(self) -> tuple[socket.socket, int] | None:
        """A subscribed socket in the device's namespace and its ifindex there; None if
        the device was deleted."""
        name = queue_device_name(self._tun_fd)
        if name is None:
            return None
        try:
            netns = fcntl.ioctl(self._tun_fd, TUNGETDEVNETNS)
        except OSError as exc:
            if exc.errno in DEVICE_GONE_ERRNOS:
                return None
            raise
        try:
            with entered_netns_fd(netns):
                ifindex = socket.if_nametoindex(name)
                sock = socket.socket(
                    socket.AF_NETLINK,
                    socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC,
                    socket.NETLINK_ROUTE,
                )
        finally:
            os.close(netns)
        try:
            sock.bind((0, RTMGRP_LINK))
        except OSError:
            sock.close()
            raise
        return sock, ifindex

    def _request(self) -> None:
        if self._sock is None:
            return
        try:
            self._sock.sendto(link_request(self.ifindex), (KERNEL_PORT, 0))
        except OSError as exc:  # the next notification still tells us
            log.warning("cannot ask for the state of device %d: %s", self.ifindex, exc)

    def _close_socket(self) -> None:
        if self._sock is not None:
            self._epoll.unregister(self._sock.fileno())
            self._sock.close()
            self._sock = None
        self.ifindex = 0
