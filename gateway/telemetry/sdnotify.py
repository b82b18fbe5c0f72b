"""The systemd notify protocol (sd_notify(3)) on the standard library.

A message is one datagram of newline-separated `KEY=value` lines sent to the unix socket
named by $NOTIFY_SOCKET: a filesystem path, or an abstract name written with a leading '@'.
Without $NOTIFY_SOCKET (not started by systemd as Type=notify) every call is a no-op.
A message may carry fds (SCM_RIGHTS): `FDSTORE=1` keeps them in the service's fd store
(`FileDescriptorStoreMax=`), which systemd hands back to the next start in $LISTEN_FDS.
"""

from __future__ import annotations

import array
import os
import socket
from collections.abc import Mapping, Sequence

# A STATUS= line is shown by `systemctl status`; keep it short and on one line.
MAX_STATUS_CHARS = 200
MAX_FD_NAME = 255


def socket_address(notify_socket: str) -> str | bytes:
    """The address to send to for a $NOTIFY_SOCKET value ('@name' is an abstract socket)."""
    if notify_socket.startswith("@"):
        return b"\0" + notify_socket[1:].encode()
    if not notify_socket.startswith("/"):
        raise ValueError(f"NOTIFY_SOCKET must be an absolute path or @abstract: {notify_socket!r}")
    return notify_socket


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings systemd expects, or None when the watchdog is off.

    Follows sd_watchdog_enabled(3): WATCHDOG_USEC must be a positive integer and, when
    WATCHDOG_PID is set, it must name this process.
    """
    env = os.environ if environ is None else environ
    usec_text = env.get("WATCHDOG_USEC", "")
    if not usec_text.isascii() or not usec_text.isdigit() or int(usec_text) == 0:
        return None
    pid_text = env.get("WATCHDOG_PID")
    if pid_text is not None and pid_text != str(os.getpid()):
        return None
    return int(usec_text) / 1_000_000


class Notifier:
    """Sends sd_notify messages. Send errors are swallowed: systemd going away must not
    take the gateway down (sd_notify behaves the same)."""

    def __init__(self, notify_socket: str | None = None) -> None:
        value = os.environ.get("NOTIFY_SOCKET") if notify_socket is None else notify_socket
        self._address = socket_address(value) if value else None
        self._sock: socket.socket | None = None
        if self._address is not None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, message: str, fds: Sequence[int] = ()) -> bool:
        """Send one raw message (with `fds` attached); True if it was handed to the socket."""
        if self._sock is None or self._address is None:
            return False
        rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
        try:
            self._sock.sendmsg([message.encode()], rights, 0, self._address)
        except OSError:
            return False
        return True

    def store_fd(self, name: str, fd: int) -> bool:
        """Keep `fd` in systemd's fd store under `name`. FDPOLL=0: systemd must not drop it
        on POLLHUP/POLLERR (a UDP socket with an error queued is still the socket)."""
        return self.notify(f"FDSTORE=1\nFDNAME={check_fd_name(name)}\nFDPOLL=0", [fd])

    def remove_stored(self, name: str) -> bool:
        """Close every fd stored under `name` in systemd's fd store."""
        return self.notify(f"FDSTOREREMOVE=1\nFDNAME={check_fd_name(name)}")

    def ready(self, status: str | None = None) -> bool:
        return self.notify(_with_status("READY=1", status))

    def status(self, text: str) -> bool:
        return self.notify(_status_line(text))

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def stopping(self, status: str | None = None) -> bool:
        return self.notify(_with_status("STOPPING=1", status))

    def reloading(self) -> bool:
        return self.notify("RELOADING=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def check_fd_name(name: str) -> str:
    """`name` if systemd accepts it as an FDNAME= (printable ASCII, no ':', 1..255 chars)."""
    if not 0 < len(name) <= MAX_FD_NAME or not name.isascii() or not name.isprintable():
        raise ValueError(f"bad fd name {name!r}")
    if ":" in name:
        raise ValueError(f"bad fd name {name!r}: ':' separates names in $LISTEN_FDNAMES")
    return name


def _status_line(text: str) -> str:
    one_line = " ".join(text.split())
    return f"STATUS={one_line[:MAX_STATUS_CHARS]}"


def _with_status(first: str, status: str | None) -> str:
    return first if status is None else f"{first}\n{_status_line(status)}"
