"""The userspace API's unix socket, `/var/run/wireguard/<ifname>.sock`: a nonblocking
server for an epoll loop (`UapiServer.fileno()` is an epoll fd; call `handle_events()` when it
is readable) that feeds each client's bytes to a `UapiConnection` and the events to the
`UapiBackend`.

Connections are bounded (16) and none can hold its place: one idle (no byte read or
written) for IDLE_TIMEOUT is closed at the server's next event, and when every place is
taken a new connection takes the place of the one idle longest, if that one has been idle
for EVICT_IDLE (so `wg` is never locked out for longer). Each connection gets at most
REPLIES_PER_TURN replies per `handle_events`; pipelined requests past that wait for the
next call, so one client cannot hold up the others or the loop that serves them."""

from __future__ import annotations

import logging
import os
import select
import socket
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from gateway.uapi.codec import format_errno, format_get
from gateway.uapi.connection import MAX_REQUEST_BYTES, UapiConnection
from gateway.uapi.types import (
    ERR_UNKNOWN,
    CloseConnection,
    Event,
    GetRequest,
    RequestFailed,
    SetRequest,
    UapiBackend,
)

log = logging.getLogger(__name__)

MAX_DRAIN_BYTES = 64 << 20  # input discarded after a session ends, before the socket closes
SOCKET_DIR = Path("/var/run/wireguard")
MAX_CONNECTIONS = 16
IDLE_TIMEOUT = 10.0  # seconds; `wg` finishes in milliseconds
EVICT_IDLE = 1.0  # seconds idle before a new connection may take a full table's place
REPLIES_PER_TURN = 4
# Under systemd the socket is bound elsewhere and root links it into SOCKET_DIR (see link.py).
CONTROL_DIR_ENV = "FIREZONE_GW_CONTROL_SOCKET_DIR"


def control_socket_dir() -> Path:
    """Where the gateway binds its control socket: $FIREZONE_GW_CONTROL_SOCKET_DIR, else
    /var/run/wireguard as wireguard-go."""
    return Path(os.environ.get(CONTROL_DIR_ENV) or SOCKET_DIR)


# ---- the socket server ----


@dataclass(slots=True)
class _Client:
    sock: socket.socket
    proto: UapiConnection
    out: bytearray = field(default_factory=bytearray)
    events: int = 0  # epoll mask currently registered
    drained: int = 0  # bytes discarded after the reply to a request that ended the session
    active: float = 0.0  # when a byte was last read or written (the server's clock)


class UapiServer:
    """Serves one interface's control socket from an epoll loop, never blocking.

    `fileno()` is an epoll fd that is readable whenever a client needs service; register it
    in the main loop and call `handle_events()`. The socket file is removed on close() only
    if it is still the one this server created.
    """

    def __init__(  # noqa: PLR0913 # the socket and the backend; bounds keyword-only
        self,
        path: str | os.PathLike[str],
        backend: UapiBackend,
        *,
        max_connections: int = MAX_CONNECTIONS,
        max_request_bytes: int = MAX_REQUEST_BYTES,
        idle_timeout: float = IDLE_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = Path(path)
        self._idle_timeout = idle_timeout
        self._clock = clock
        self._backend = backend
        self._max_connections = max_connections
        self._max_request = max_request_bytes
        self._clients: dict[int, _Client] = {}
        self._listener = _bind_unix(self.path)
        st = os.stat(self.path)
        self._identity = (st.st_dev, st.st_ino)
        self._epoll = select.epoll(flags=select.EPOLL_CLOEXEC)
        self._epoll.register(self._listener.fileno(), select.EPOLLIN)

    @classmethod
    def for_interface(
        cls, ifname: str, backend: UapiBackend, *, directory: str | os.PathLike[str] | None = None
    ) -> UapiServer:
        """The socket `<ifname>.sock` in `directory` (default: control_socket_dir())."""
        if not ifname or "/" in ifname or len(ifname.encode()) > 15:  # noqa: PLR2004 (IFNAMSIZ-1)
            raise ValueError(f"bad interface name {ifname!r}")
        folder = Path(directory) if directory is not None else control_socket_dir()
        folder.mkdir(mode=0o755, parents=True, exist_ok=True)
        return cls(folder / f"{ifname}.sock", backend)

    @property
    def backend(self) -> UapiBackend:
        return self._backend

    @backend.setter
    def backend(self, backend: UapiBackend) -> None:
        """Serve from another backend (the crypto process installs its own after fork)."""
        self._backend = backend

    def fileno(self) -> int:
        return self._epoll.fileno()

    def fds(self) -> tuple[int, ...]:
        """Every fd the server needs (its epoll and the listening socket), for fd hygiene."""
        return (self._epoll.fileno(), self._listener.fileno())

    @property
    def connections(self) -> int:
        return len(self._clients)

    def handle_events(self, max_events: int = 64) -> None:
        """Serve whatever is ready now, then close idle connections; never waits."""
        for fd, mask in self._epoll.poll(0, max_events):
            if fd == self._listener.fileno():
                self._accept()
            elif (client := self._clients.get(fd)) is not None:
                self._service(client, mask)
        self._close_idle()

    def _close_idle(self) -> None:
        now = self._clock()
        for client in [c for c in self._clients.values() if now - c.active >= self._idle_timeout]:
            log.info("uapi: closing a connection idle for %.0f s", now - client.active)
            self._drop(client)

    def owns_socket(self) -> bool:
        """Whether the socket file is still this server's. wireguard-go shuts its device
        down when the file is deleted; the gateway can check this on its periodic tick."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False
        return (st.st_dev, st.st_ino) == self._identity

    def close(self) -> None:
        for client in list(self._clients.values()):
            self._drop(client)
        self._epoll.close()
        self._listener.close()
        if self.owns_socket():
            self.path.unlink()

    def _accept(self) -> None:
        for _ in range(self._max_connections):
            try:
                sock, _ = self._listener.accept()
            except BlockingIOError:
                return
            now = self._clock()
            if len(self._clients) >= self._max_connections and not self._evict_idlest(now):
                log.warning("uapi: too many connections, refusing one")
                sock.close()
                continue
            sock.setblocking(False)
            client = _Client(sock, UapiConnection(max_request_bytes=self._max_request))
            client.active = now
            self._clients[sock.fileno()] = client
            client.events = select.EPOLLIN
            self._epoll.register(sock.fileno(), client.events)

    def _evict_idlest(self, now: float) -> bool:
        """Make room for a new connection by closing the one idle longest, if it has been
        idle for EVICT_IDLE; False if every connection is busy."""
        idlest = min(self._clients.values(), key=lambda c: c.active)
        if now - idlest.active < EVICT_IDLE:
            return False
        log.info("uapi: all places taken; closing the connection idle longest")
        self._drop(idlest)
        return True

    def _service(self, client: _Client, mask: int) -> None:
        client.active = self._clock()
        if client.drained:
            self._drain(client)
            return
        if mask & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR) and not client.out:
            self._read(client)
        for _ in range(REPLIES_PER_TURN):
            self._process(client)  # stops after one reply: pipelined requests wait for it
            if not client.out:
                break
            if not self._write(client):
                return
            if client.out:
                self._watch(client, select.EPOLLOUT)
                return
        else:  # the turn's budget is spent: writable wakes us again for the rest
            self._watch(client, select.EPOLLOUT)
            return
        if client.proto.wants_input:
            self._watch(client, select.EPOLLIN)
        else:
            self._finish(client)

    def _finish(self, client: _Client) -> None:
        """End a session whose reply is written. Closing with unread input would reset the
        connection (and the client could lose the reply), so read and discard until the
        client closes too, up to MAX_DRAIN_BYTES."""
        try:
            client.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._drop(client)
            return
        client.drained = 1
        self._watch(client, select.EPOLLIN)
        self._drain(client)

    def _drain(self, client: _Client) -> None:
        while client.drained <= MAX_DRAIN_BYTES:
            try:
                data = client.sock.recv(65536)
            except BlockingIOError:
                return
            except OSError:
                break
            if not data:
                break
            client.drained += len(data)
        self._drop(client)

    def _read(self, client: _Client) -> None:
        while client.proto.wants_input:
            try:
                data = client.sock.recv(65536)
            except BlockingIOError:
                return
            except OSError:
                client.proto.feed_eof()
                return
            if not data:
                client.proto.feed_eof()
                return
            client.proto.feed(data)

    def _process(self, client: _Client) -> None:
        while not client.out:
            event = client.proto.next_event()
            if event is None:
                return
            client.out += self._reply(event)

    def _reply(self, event: Event) -> bytes:
        match event:
            case GetRequest():
                return self._get()
            case SetRequest():
                return self._set(event)
            case RequestFailed(errno=errno, reason=reason):
                log.info("uapi: request failed (errno %d): %s", errno, reason)
                return format_errno(errno)
            case CloseConnection(reason=reason):
                log.debug("uapi: closing connection: %s", reason)
        return b""

    def _get(self) -> bytes:
        try:
            return format_get(self._backend.get_snapshot())
        except Exception:
            log.exception("uapi get failed")
            return format_errno(ERR_UNKNOWN)

    def _set(self, request: SetRequest) -> bytes:
        try:
            return format_errno(self._backend.apply(request))
        except Exception:
            log.exception("uapi set failed")
            return format_errno(ERR_UNKNOWN)

    def _write(self, client: _Client) -> bool:
        """Send what the socket takes; False if the client is gone."""
        try:
            sent = client.sock.send(client.out)
        except BlockingIOError:
            return True
        except OSError:
            self._drop(client)
            return False
        del client.out[:sent]
        return True

    def _watch(self, client: _Client, events: int) -> None:
        if client.events != events:
            client.events = events
            self._epoll.modify(client.sock.fileno(), events)

    def _drop(self, client: _Client) -> None:
        fd = client.sock.fileno()
        self._clients.pop(fd, None)
        self._epoll.unregister(fd)
        client.sock.close()


def remove_if_stale(path: Path) -> None:
    """Remove a socket nobody listens on (left by a crashed run), as wireguard-go does.

    A live socket (someone accepts) or any other kind of file is never touched.
    """
    if not stat.S_ISSOCK(path.lstat().st_mode):
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(str(path))
        except ConnectionRefusedError:
            log.warning("removing stale control socket %s (nobody listens on it)", path)
            path.unlink(missing_ok=True)
        except OSError:
            return


def _bind_unix(path: Path) -> socket.socket:
    """Bind a listening socket at `path` with mode 0600; replaces only a stale socket."""
    if path.is_socket():
        remove_if_stale(path)
    if path.exists() or path.is_symlink():
        kind = "a socket" if stat.S_ISSOCK(path.lstat().st_mode) else "a file"
        raise FileExistsError(
            f"{path} already exists ({kind}) and is in use; another instance may be running"
        )
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
    old_umask = os.umask(0o077)
    try:
        sock.bind(str(path))
    except OSError:
        sock.close()
        raise
    finally:
        os.umask(old_umask)
    sock.listen(16)
    return sock
