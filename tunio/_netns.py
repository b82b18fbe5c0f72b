"""Run a block of code inside a network namespace, by name or fd (the calling thread only)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from tunio.errors import TunError

NETNS_RUN_DIR = "/var/run/netns"


@contextlib.contextmanager
def entered_netns(name: str | None) -> Iterator[None]:
    """Switch this thread into netns `name` (as `ip netns exec` would) and back afterwards.

    Sockets and TUN queues opened inside stay bound to that namespace after the switch back.
    The namespace must exist: pyroute2's own helpers would silently create a missing one.
    """
    if name is None:
        yield
        return
    path = os.path.join(NETNS_RUN_DIR, name)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise TunError(f"network namespace {name!r} cannot be opened ({path}): {exc}") from exc
    try:
        with entered_netns_fd(fd):
            yield
    finally:
        os.close(fd)


def is_current_netns(fd: int) -> bool:
    """Whether `fd` is the network namespace this thread is in (same nsfs inode)."""
    own = os.stat("/proc/thread-self/ns/net")
    there = os.fstat(fd)
    return (own.st_dev, own.st_ino) == (there.st_dev, there.st_ino)


@contextlib.contextmanager
def entered_netns_fd(fd: int) -> Iterator[None]:
    """Switch this thread into the network namespace open at `fd` and back afterwards.

    No switch when it is already there: setns needs CAP_SYS_ADMIN, which the systemd unit
    does not grant (and RestrictNamespaces= refuses), and the device usually lives in the
    gateway's own namespace.
    """
    if is_current_netns(fd):
        yield
        return
    from pyroute2 import netns as pr_netns  # noqa: PLC0415 - pyroute2 costs ~1 s to import: only on a switch

    pr_netns.pushns(fd)
    try:
        yield
    finally:
        pr_netns.popns()
