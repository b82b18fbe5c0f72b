from __future__ import annotations

import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed.netns import Hosts, hosts


@pytest.fixture
def netns_hosts() -> Iterator[Hosts]:
    """Network namespaces for one test, all removed afterwards even when the test fails."""
    with hosts() as factory:
        yield factory


@pytest.fixture
def control_sockets() -> Iterator[tuple[socket.socket, socket.socket]]:
    """(supervisor end, crypto end) of a control socketpair, non-blocking, as the supervisor
    makes it."""
    supervisor_end, crypto_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    supervisor_end.setblocking(False)
    crypto_end.setblocking(False)
    yield supervisor_end, crypto_end
    supervisor_end.close()
    crypto_end.close()


@pytest.fixture
def notify_path() -> Iterator[tuple[str, socket.socket]]:
    """($NOTIFY_SOCKET value, the socket bound there): a stand-in for systemd's."""
    with tempfile.TemporaryDirectory(prefix="fzo-notify-") as tmp:
        path = str(Path(tmp) / "notify.sock")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        sock.settimeout(5)
        try:
            yield path, sock
        finally:
            sock.close()
