"""What a TUN queue fd says about its device: its name, whether it is up, whether it is gone.

A queue fd stays attached to its device wherever the device goes (another network namespace,
a new name), so the fd, not the name, is how the gateway keeps track of it.
"""

from __future__ import annotations

import errno
import fcntl
import socket
import struct

SIOCGIFFLAGS = 0x8913
IFF_UP = 0x1
TUNGETIFF = 0x800454D2  # _IOR('T', 210, unsigned int): name of the device a queue fd is attached to
# A TUN queue fd whose device was deleted answers EBADFD to read, write and ioctl.
DEVICE_GONE_ERRNOS = frozenset({errno.EBADFD, errno.ENODEV})


class DeviceGone(Exception):
    """Raised in a TUN worker when its queue fd says the device was deleted."""


def device_gone_error(exc: BaseException) -> bool:
    """Whether `exc` (or the OSError it wraps) means the TUN device no longer exists."""
    current: BaseException | None = exc
    while current is not None:
        if isinstance(current, OSError) and current.errno in DEVICE_GONE_ERRNOS:
            return True
        current = current.__cause__
    return False


def interface_up(name: str) -> bool | None:
    """Whether interface `name` in this network namespace is up; None if it is not here
    (a TUN device moved to another namespace keeps working, its state is not ours to see)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            ifr = fcntl.ioctl(sock, SIOCGIFFLAGS, struct.pack("16s24x", name.encode()))
        except OSError as exc:
            if exc.errno == errno.ENODEV:
                return None
            raise
    (flags,) = struct.unpack_from("H", ifr, 16)
    return bool(flags & IFF_UP)


def queue_device_name(fd: int) -> str | None:
    """The name of the TUN device queue `fd` is attached to, wherever the device now lives
    (another network namespace, a new name); None once the device was deleted."""
    try:
        ifr = fcntl.ioctl(fd, TUNGETIFF, bytes(40))
    except OSError as exc:
        if exc.errno in DEVICE_GONE_ERRNOS:
            return None
        raise
    return ifr[:16].split(b"\0", 1)[0].decode(errors="replace")
