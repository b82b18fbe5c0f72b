"""TUN device configuration over netlink (pyroute2): MTU, addresses, routes, link state.

Every netlink failure becomes a `NetlinkError` naming the operation and the device.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from tunio._netns import NETNS_RUN_DIR, entered_netns
from tunio.errors import DeviceExistsError, DeviceInUseError, NetlinkError, TunError
from tunio.names import validate_ifname

log = logging.getLogger(__name__)

DEFAULT_TXQUEUELEN = 10000  # Firezone found the default (500 on TUN) too small under load
MIN_MTU = 68
MIN_MTU_IPV6 = 1280
MAX_MTU = 65535
IFA_F_NODAD = 0x02
# Errors the kernel gives for IPv6 on a host or device where IPv6 is disabled.
_IPV6_DISABLED_ERRNOS = frozenset({errno.EACCES, errno.EAFNOSUPPORT, errno.EOPNOTSUPP})

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class LinkInfo:
    ifindex: int
    kind: str | None
    owner: int | None  # IFLA_TUN_OWNER: the uid a TUN device was given (TUNSETOWNER), if any
    attached_queues: int  # queues held open by some process (enabled + disabled)


@contextlib.contextmanager
def _rtnl(netns: str | None, what: str) -> Iterator[Any]:
    """An IPRoute socket in `netns`; pyroute2 errors are re-raised naming `what`.

    The socket is opened while this thread is inside the namespace, which binds it there:
    5x cheaper than IPRoute(netns=...), which forks a helper process per socket.
    """
    from pyroute2 import IPRoute  # noqa: PLC0415 - ~1 s to import: not on a start that needs no netlink
    from pyroute2.netlink.exceptions import NetlinkError as PyrouteNetlinkError  # noqa: PLC0415 - as IPRoute

    try:
        with entered_netns(netns):
            ipr = IPRoute()
    except TunError as exc:
        raise NetlinkError(f"{what}: {exc}") from exc
    try:
        with ipr:
            yield ipr
    except PyrouteNetlinkError as exc:
        raise NetlinkError(f"{what}: {os.strerror(exc.code)} (errno {exc.code})") from exc


def _where(name: str, netns: str | None) -> str:
    return f"{name} in netns {netns}" if netns else name


def _lookup(ipr: Any, name: str) -> Any | None:
    from pyroute2.netlink.exceptions import NetlinkError as PyrouteNetlinkError  # noqa: PLC0415 - loaded with ipr

    try:
        (msg,) = ipr.link("get", ifname=name)
    except PyrouteNetlinkError as exc:
        if exc.code == errno.ENODEV:
            return None
        raise
    return msg


def link_info(name: str, *, netns: str | None = None) -> LinkInfo | None:
    """What netlink knows about device `name`, or None if there is no such device."""
    with _rtnl(netns, f"looking up device {_where(name, netns)}") as ipr:
        msg = _lookup(ipr, name)
    if msg is None:
        return None
    kind: str | None = None
    owner: int | None = None
    queues = 0
    linkinfo = msg.get_attr("IFLA_LINKINFO")
    if linkinfo is not None:
        kind = linkinfo.get_attr("IFLA_INFO_KIND")
        data = linkinfo.get_attr("IFLA_INFO_DATA")
        if kind == "tun" and data is not None:
            queues = (data.get_attr("IFLA_TUN_NUM_QUEUES") or 0) + (
                data.get_attr("IFLA_TUN_NUM_DISABLED_QUEUES") or 0
            )
            owner = data.get_attr("IFLA_TUN_OWNER")
    return LinkInfo(msg["index"], kind, owner, queues)


def queue_holders(name: str) -> list[int]:
    """Pids of processes holding a TUN queue fd attached to a device called `name`.

    Matched by name through /proc/PID/fdinfo (`iff:` line), so a device of the same name in
    another namespace also matches: use it to explain an error, not to decide.
    """
    pids: list[int] = []
    with os.scandir("/proc") as procs:
        for proc in procs:
            if proc.name.isdigit() and _holds_tun(proc.path, name):
                pids.append(int(proc.name))
    return sorted(pids)


def _holds_tun(proc_path: str, name: str) -> bool:
    try:
        with os.scandir(f"{proc_path}/fd") as fds:
            for fd in fds:
                if os.readlink(fd.path) != "/dev/net/tun":
                    continue
                with open(f"{proc_path}/fdinfo/{fd.name}") as info:
                    if f"iff:\t{name}\n" in info.read():
                        return True
    except OSError:  # the process exited or is not ours to inspect
        return False
    return False


def remove_stale_device(name: str, *, netns: str | None = None) -> None:
    """Delete an idle device we made earlier, or raise why the name cannot be used.

    Ours means a TUN device owned by our uid (`tunio.linux` sets the owner of every device
    it creates). Our devices are not persistent, so they vanish with their last queue: an
    idle one is left only if something made it persistent. Another program's device of our
    name is left alone unless it, too, was given our uid as owner.
    """
    info = link_info(name, netns=netns)
    where = _where(name, netns)
    if info is None:
        return  # gone in the meantime: the caller retries creating it
    if info.kind != "tun":
        raise DeviceExistsError(
            f"cannot create TUN device {where}: a {info.kind or 'non-TUN'} device with that"
            " name exists"
        )
    if info.attached_queues > 0:
        holders = ", ".join(map(str, queue_holders(name))) or "unknown"
        raise DeviceInUseError(
            f"TUN device {where} is in use by another process (pids: {holders};"
            f" {info.attached_queues} queues attached): refusing to attach to it. Stop that"
            " process or choose another device name"
        )
    if info.owner != os.geteuid():
        owner = "no owner" if info.owner is None else f"owner uid {info.owner}"
        raise DeviceExistsError(
            f"TUN device {where} exists and was not created by firezone-gw ({owner}, we run"
            f" as uid {os.geteuid()}): delete it (ip link del {name}) or choose another"
            " device name"
        )
    log.warning("removing stale TUN device %s left by an earlier firezone-gw run", where)
    with _rtnl(netns, f"deleting stale device {where}") as ipr:
        ipr.link("del", index=info.ifindex)


class TunDeviceManager:
    """Configures an existing TUN device (made by `tunio.open_multiqueue`) through netlink.

    Every method is idempotent: calling `configure` twice leaves the same state.
    """

    def __init__(self, name: str, *, netns: str | None = None) -> None:
        validate_ifname(name)
        self.name = name
        self.netns = netns

    def __repr__(self) -> str:
        return f"TunDeviceManager({self.name!r}, netns={self.netns!r})"

    @property
    def _where(self) -> str:
        return _where(self.name, self.netns)

    def exists(self) -> bool:
        return link_info(self.name, netns=self.netns) is not None

    @property
    def ifindex(self) -> int:
        info = link_info(self.name, netns=self.netns)
        if info is None:
            raise TunError(f"device {self._where} does not exist")
        return info.ifindex

    def configure(
        self,
        mtu: int,
        addresses: Sequence[IPInterface],
        routes: Sequence[IPNetwork] = (),
        txqueuelen: int = DEFAULT_TXQUEUELEN,
    ) -> None:
        """Set MTU and queue length, add `addresses`, set the link up (routes need it) and
        route `routes` into the device.

        If IPv6 is disabled on this host or device, IPv6 addresses and routes are skipped with
        a warning and IPv4 goes on working.
        """
        has_v6 = any(map(_is_v6, [*addresses, *routes]))
        if not MIN_MTU <= mtu <= MAX_MTU:
            raise TunError(f"MTU {mtu} for {self._where} is outside {MIN_MTU}..{MAX_MTU}")
        if has_v6 and mtu < MIN_MTU_IPV6:
            raise TunError(f"MTU {mtu} for {self._where} is below IPv6's minimum {MIN_MTU_IPV6}")
        if txqueuelen <= 0:
            raise TunError(f"txqueuelen for {self._where} must be positive, got {txqueuelen}")
        index = self.ifindex
        with _rtnl(
            self.netns, f"setting MTU {mtu}, txqueuelen {txqueuelen} on {self._where}"
        ) as ipr:
            ipr.link("set", index=index, mtu=mtu, txqlen=txqueuelen)
        ipv6_ok = True
        for address in addresses:
            if _is_v6(address) and ipv6_ok:
                ipv6_ok = self._apply(f"adding address {address} to {self._where}", address, index)
            elif not _is_v6(address):
                self._apply(f"adding address {address} to {self._where}", address, index)
        self.up()
        for route in routes:
            if _is_v6(route) and not ipv6_ok:
                continue
            ok = self._apply(f"adding route {route} via {self._where}", route, index)
            ipv6_ok = ipv6_ok and (ok or not _is_v6(route))

    def _apply(self, what: str, item: IPInterface | IPNetwork, index: int) -> bool:
        """Add one address or route (already present is fine); False if IPv6 is disabled."""
        try:
            with _rtnl(self.netns, what) as ipr:
                if isinstance(item, ipaddress.IPv4Network | ipaddress.IPv6Network):
                    ipr.route("replace", dst=str(item), oif=index)
                else:
                    flags = IFA_F_NODAD if _is_v6(item) else 0
                    ipr.addr(
                        "add",
                        index=index,
                        address=str(item.ip),
                        prefixlen=item.network.prefixlen,
                        flags=flags,
                    )
        except NetlinkError as exc:
            code = _errno_of(exc)
            if code == errno.EEXIST:
                return True
            if _is_v6(item) and code in _IPV6_DISABLED_ERRNOS:
                log.warning(
                    "IPv6 is disabled for %s (%s): continuing with IPv4 only", self._where, exc
                )
                return False
            raise
        return True

    def remove_address(self, address: IPInterface) -> None:
        """Remove one address from the device; nothing to do if it is not there."""
        what = f"removing address {address} from {self._where}"
        try:
            with _rtnl(self.netns, what) as ipr:
                ipr.addr(
                    "del",
                    index=self.ifindex,
                    address=str(address.ip),
                    prefixlen=address.network.prefixlen,
                )
        except NetlinkError as exc:
            if _errno_of(exc) != errno.EADDRNOTAVAIL:
                raise

    def up(self) -> None:
        with _rtnl(self.netns, f"setting {self._where} up") as ipr:
            ipr.link("set", index=self.ifindex, state="up")

    def down(self) -> None:
        with _rtnl(self.netns, f"setting {self._where} down") as ipr:
            ipr.link("set", index=self.ifindex, state="down")

    def move_to_netns(self, netns: str) -> None:
        """Move the device into namespace `netns` (addresses and routes do not follow it).

        Open queue fds keep working; this manager then configures it there.
        """
        target = os.path.join(NETNS_RUN_DIR, netns)
        what = f"moving {self._where} to netns {netns}"
        try:
            fd = os.open(target, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise NetlinkError(f"{what}: {exc}") from exc
        try:
            with _rtnl(self.netns, what) as ipr:
                ipr.link("set", index=self.ifindex, net_ns_fd=fd)
        finally:
            os.close(fd)
        self.netns = netns

    def delete(self) -> None:
        """Remove the device (with its addresses and routes); nothing to do if it is gone.

        A TUN device also disappears by itself when its last queue is closed.
        """
        from pyroute2.netlink.exceptions import NetlinkError as PyrouteNetlinkError  # noqa: PLC0415 - loaded by _rtnl

        with _rtnl(self.netns, f"deleting {self._where}") as ipr:
            msg = _lookup(ipr, self.name)
            if msg is None:
                return
            try:
                ipr.link("del", index=msg["index"])
            except PyrouteNetlinkError as exc:
                if exc.code != errno.ENODEV:
                    raise


def _is_v6(item: IPInterface | IPNetwork) -> bool:
    return isinstance(item, ipaddress.IPv6Interface | ipaddress.IPv6Network)


def _errno_of(exc: NetlinkError) -> int | None:
    from pyroute2.netlink.exceptions import NetlinkError as PyrouteNetlinkError  # noqa: PLC0415 - loaded by _rtnl

    cause = exc.__cause__
    return cause.code if isinstance(cause, PyrouteNetlinkError) else None
