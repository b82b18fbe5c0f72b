"""The WireGuard cross-platform userspace API (what `wg` speaks to wireguard-go).

A sans-I/O codec (`UapiConnection` turns bytes into `GetRequest` / `SetRequest` events;
`format_get` and `format_errno` make the replies) and a nonblocking unix-socket server for
`/var/run/wireguard/<ifname>.sock` that fits an epoll loop (`UapiServer.fileno()` is an epoll
fd; call `handle_events()` when it is readable). The gateway plugs in through `UapiBackend`.

Errors follow wireguard-go: a reply ends with `errno=N` where N is 0 or a negative errno
(-EINVAL for a bad key or value, -EPROTO for a line without '=', -EIO for input it cannot
read, -EADDRINUSE when the listen port is taken, -55 for anything else). A `set` request is
parsed completely before anything is applied, so a bad line changes nothing.
"""

from __future__ import annotations

import errno as _errno
import ipaddress
import logging
import os
import re
import select
import socket
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from gateway.endpoint import Endpoint, EndpointError, format_endpoint
from gateway.endpoint import parse_endpoint as parse_endpoint_text
from gateway.ipnet import IPNetwork
from gateway.wireguard.constants import KEY_SIZE

log = logging.getLogger(__name__)

ERR_IO = -_errno.EIO
ERR_PROTOCOL = -_errno.EPROTO
ERR_INVALID = -_errno.EINVAL
ERR_PORT_IN_USE = -_errno.EADDRINUSE
ERR_UNKNOWN = -55  # wireguard-go's IpcErrorUnknown

ZERO_KEY = bytes(KEY_SIZE)
MAX_LINE_BYTES = 4096
MAX_REQUEST_BYTES = 32 << 20  # ~1M allowed IPs; wireguard-go has no limit
READ_AHEAD_BYTES = 256 << 10  # unparsed input kept per connection before reading pauses
MAX_DRAIN_BYTES = 64 << 20  # input discarded after a session ends, before the socket closes
SOCKET_DIR = Path("/var/run/wireguard")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_DIGITS = re.compile(r"[0-9]+")
_HEX_KEY = re.compile(r"[0-9a-fA-F]{64}")


class UapiError(Exception):
    """A request the protocol rejects; `errno` is the negative value sent back."""

    def __init__(self, errno: int, message: str) -> None:
        super().__init__(message)
        self.errno = errno


# ---- set: typed operations ----


@dataclass(frozen=True, slots=True)
class PeerChange:
    """One `public_key=` section of a set request, folded in line order."""

    public_key: bytes
    remove: bool = False
    update_only: bool = False  # change only if the peer exists; never create it
    preshared_key: bytes | None = None  # ZERO_KEY clears it
    endpoint: Endpoint | None = None
    persistent_keepalive_interval: int | None = None  # seconds, 0 = off
    replace_allowed_ips: bool = False  # drop the peer's allowed IPs before adding these
    allowed_ips: tuple[IPNetwork, ...] = ()  # masked; taken from any other peer that has them
    removed_allowed_ips: tuple[IPNetwork, ...] = ()  # `allowed_ip=-prefix` (newer wg)


@dataclass(frozen=True, slots=True)
class SetRequest:
    private_key: bytes | None = None  # ZERO_KEY removes the key
    listen_port: int | None = None  # 0 = pick any port
    fwmark: int | None = None  # 0 = off
    replace_peers: bool = False  # remove every peer before applying `peers`
    peers: tuple[PeerChange, ...] = ()


@dataclass(frozen=True, slots=True)
class GetRequest:
    pass


@dataclass(frozen=True, slots=True)
class RequestFailed:
    errno: int
    reason: str


@dataclass(frozen=True, slots=True)
class CloseConnection:
    reason: str


Event = GetRequest | SetRequest | RequestFailed | CloseConnection


# ---- get: typed snapshot ----


@dataclass(frozen=True, slots=True)
class PeerState:
    public_key: bytes
    preshared_key: bytes | None = None
    endpoint: Endpoint | None = None
    last_handshake_ns: int = 0  # wall clock, ns since the epoch; 0 = never
    tx_bytes: int = 0
    rx_bytes: int = 0
    persistent_keepalive_interval: int = 0
    allowed_ips: Sequence[IPNetwork] = ()


@dataclass(frozen=True, slots=True)
class DeviceState:
    private_key: bytes | None = None
    listen_port: int = 0
    fwmark: int = 0
    peers: Sequence[PeerState] = ()


class UapiBackend(Protocol):
    """What the gateway implements. Both calls run on the event-loop thread.

    `apply` must apply the whole request or nothing and return 0 or a negative errno
    (ERR_PORT_IN_USE when a listen port cannot be bound, ERR_INVALID for values the data
    plane refuses). A peer whose public key is the device's own is ignored, as in
    wireguard-go.
    """

    def get_snapshot(self) -> DeviceState: ...

    def apply(self, request: SetRequest) -> int: ...


# ---- value parsing ----


def parse_key(value: str, what: str) -> bytes:
    # Never quote the value: it may be a private or preshared key, and errors are logged.
    if not _HEX_KEY.fullmatch(value):
        problem = "non-hex characters" if len(value) == 2 * KEY_SIZE else f"{len(value)} characters"
        raise UapiError(ERR_INVALID, f"{what}: expected {2 * KEY_SIZE} hex digits, got {problem}")
    return bytes.fromhex(value)


def parse_uint(value: str, bits: int, what: str) -> int:
    if len(value) > 20 or not _DIGITS.fullmatch(value) or int(value) >= 1 << bits:  # noqa: PLR2004 (digits of 2^64)
        raise UapiError(ERR_INVALID, f"{what}: expected an integer below 2^{bits}, got {value!r}")
    return int(value)


def parse_endpoint(value: str) -> Endpoint:
    """A numeric endpoint, as wireguard-go's netip.ParseAddrPort: `wg` resolves names itself."""
    try:
        return parse_endpoint_text(value, min_port=0, numeric=True)
    except EndpointError as exc:
        raise UapiError(ERR_INVALID, f"endpoint: {exc}: {value[:80]!r}") from None


def parse_prefix(value: str) -> IPNetwork:
    address_text, sep, bits_text = value.partition("/")
    if not sep or "%" in address_text:
        raise UapiError(ERR_INVALID, f"allowed_ip: expected address/bits, got {value!r}")
    try:
        address = ipaddress.ip_address(address_text)
    except ValueError:
        raise UapiError(ERR_INVALID, f"allowed_ip: bad address in {value!r}") from None
    bits = parse_uint(bits_text, 8, "allowed_ip prefix length")
    if bits > address.max_prefixlen:
        raise UapiError(ERR_INVALID, f"allowed_ip: prefix length too long in {value!r}")
    return ipaddress.ip_network((address, bits), strict=False)


def _parse_true(value: str, what: str) -> None:
    if value != "true":
        raise UapiError(ERR_INVALID, f"{what}: only 'true' is accepted, got {value!r}")


# ---- set request parser ----


@dataclass(slots=True)
class _PeerBuilder:
    public_key: bytes
    remove: bool = False
    update_only: bool = False
    preshared_key: bytes | None = None
    endpoint: Endpoint | None = None
    keepalive: int | None = None
    replace_allowed_ips: bool = False
    allowed: dict[IPNetwork, bool] = field(default_factory=dict)  # prefix -> add (last wins)

    def line(self, key: str, value: str) -> None:
        if key in ("update_only", "remove", "replace_allowed_ips"):
            _parse_true(value, key)
        # After remove=true wireguard-go keeps validating lines but applies none of them.
        ignored = self.remove
        match key:
            case "update_only":
                self.update_only = True
            case "remove":
                self.remove = True
            case "replace_allowed_ips" if not ignored:
                self.replace_allowed_ips = True
                self.allowed.clear()
            case "replace_allowed_ips":
                pass
            case "protocol_version":
                if value != "1":
                    raise UapiError(ERR_INVALID, f"protocol_version: only 1, got {value!r}")
            case _:
                self._value_line(key, value, ignored)

    def _value_line(self, key: str, value: str, ignored: bool) -> None:
        match key:
            case "preshared_key":
                psk = parse_key(value, key)
                if not ignored:
                    self.preshared_key = psk
            case "endpoint":
                endpoint = parse_endpoint(value)
                if not ignored:
                    self.endpoint = endpoint
            case "persistent_keepalive_interval":
                keepalive = parse_uint(value, 16, key)
                if not ignored:
                    self.keepalive = keepalive
            case "allowed_ip":
                add = not value.startswith("-")
                prefix = parse_prefix(value if add else value[1:])
                if not ignored:
                    self.allowed.pop(prefix, None)  # re-insert: keep line order
                    self.allowed[prefix] = add
            case _:
                raise UapiError(ERR_INVALID, f"invalid UAPI peer key: {key!r}")

    def build(self) -> PeerChange:
        if self.remove:
            return PeerChange(self.public_key, remove=True)
        return PeerChange(
            public_key=self.public_key,
            update_only=self.update_only,
            preshared_key=self.preshared_key,
            endpoint=self.endpoint,
            persistent_keepalive_interval=self.keepalive,
            replace_allowed_ips=self.replace_allowed_ips,
            allowed_ips=tuple(p for p, add in self.allowed.items() if add),
            removed_allowed_ips=tuple(p for p, add in self.allowed.items() if not add),
        )


class SetParser:
    """Folds the `key=value` lines of one set request into a SetRequest."""

    def __init__(self) -> None:
        self._private_key: bytes | None = None
        self._listen_port: int | None = None
        self._fwmark: int | None = None
        self._replace_peers = False
        self._peers: list[PeerChange] = []
        self._peer: _PeerBuilder | None = None

    def line(self, line: str) -> None:
        key, sep, value = line.partition("=")
        if not sep:
            # Not quoted: a mistyped `private_key` line would put the key into the log.
            raise UapiError(ERR_PROTOCOL, f"failed to parse a line of {len(line)} bytes: no '='")
        if key == "public_key":
            public_key = parse_key(value, key)
            self._finish_peer()
            self._peer = _PeerBuilder(public_key)
        elif self._peer is not None:
            self._peer.line(key, value)
        else:
            self._device_line(key, value)

    def _device_line(self, key: str, value: str) -> None:
        match key:
            case "private_key":
                self._private_key = parse_key(value, key)
            case "listen_port":
                self._listen_port = parse_uint(value, 16, key)
            case "fwmark":
                self._fwmark = parse_uint(value, 32, key)
            case "replace_peers":
                _parse_true(value, key)
                self._replace_peers = True
                self._peers.clear()
            case _:
                raise UapiError(ERR_INVALID, f"invalid UAPI device key: {key!r}")

    def _finish_peer(self) -> None:
        if self._peer is not None:
            self._peers.append(self._peer.build())
            self._peer = None

    def finish(self) -> SetRequest:
        self._finish_peer()
        return SetRequest(
            private_key=self._private_key,
            listen_port=self._listen_port,
            fwmark=self._fwmark,
            replace_peers=self._replace_peers,
            peers=tuple(self._peers),
        )


def parse_set(text: str) -> SetRequest:
    """Parse the body of a set request (the lines after `set=1`, no blank line)."""
    parser = SetParser()
    for line in text.splitlines():
        parser.line(line)
    return parser.finish()


# ---- replies ----


def format_errno(errno: int) -> bytes:
    return f"errno={errno}\n\n".encode()


def format_get(state: DeviceState) -> bytes:
    """The full reply to `get=1`, in wireguard-go's order, ending with errno=0."""
    lines: list[str] = []
    if state.private_key is not None and state.private_key != ZERO_KEY:
        lines.append(f"private_key={state.private_key.hex()}")
    if state.listen_port:
        lines.append(f"listen_port={state.listen_port}")
    if state.fwmark:
        lines.append(f"fwmark={state.fwmark}")
    for peer in state.peers:
        lines.append(f"public_key={peer.public_key.hex()}")
        lines.append(f"preshared_key={(peer.preshared_key or ZERO_KEY).hex()}")
        lines.append("protocol_version=1")
        if peer.endpoint is not None:
            lines.append(f"endpoint={format_endpoint(peer.endpoint)}")
        seconds, nanoseconds = divmod(peer.last_handshake_ns, 1_000_000_000)
        lines.append(f"last_handshake_time_sec={seconds}")
        lines.append(f"last_handshake_time_nsec={nanoseconds}")
        lines.append(f"tx_bytes={peer.tx_bytes}")
        lines.append(f"rx_bytes={peer.rx_bytes}")
        lines.append(f"persistent_keepalive_interval={peer.persistent_keepalive_interval}")
        lines.extend(f"allowed_ip={prefix}" for prefix in peer.allowed_ips)
    lines.append("errno=0\n\n")
    return "\n".join(lines).encode()


def format_set(state: DeviceState) -> str:
    """A `set` body that recreates `state` exactly (replace_peers), without the listen port.

    The gateway keeps this as its run-time configuration, so a restarted crypto process comes
    back with the peers that `wg` configured, not only those of the config file.
    """
    lines: list[str] = [f"private_key={(state.private_key or ZERO_KEY).hex()}"]
    if state.fwmark:
        lines.append(f"fwmark={state.fwmark}")
    lines.append("replace_peers=true")
    for peer in state.peers:
        lines.append(f"public_key={peer.public_key.hex()}")
        lines.append(f"preshared_key={(peer.preshared_key or ZERO_KEY).hex()}")
        if peer.endpoint is not None:
            lines.append(f"endpoint={format_endpoint(peer.endpoint)}")
        lines.append(f"persistent_keepalive_interval={peer.persistent_keepalive_interval}")
        lines.append("replace_allowed_ips=true")
        lines.extend(f"allowed_ip={prefix}" for prefix in peer.allowed_ips)
    return "\n".join(lines) + "\n"


# ---- one connection, sans I/O ----


class UapiConnection:
    """Turns a client's bytes into events, one request at a time.

    Feed bytes with `feed()`; pull events with `next_event()` until it returns None. The
    caller should stop reading from the socket while `wants_input` is False (the unparsed
    input is bounded by READ_AHEAD_BYTES) and while it still has a reply to write.
    """

    def __init__(
        self, *, max_line_bytes: int = MAX_LINE_BYTES, max_request_bytes: int = MAX_REQUEST_BYTES
    ) -> None:
        self._buf = bytearray()
        self._max_line = max_line_bytes
        self._max_request = max_request_bytes
        self._mode = "op"  # op | get | set | skip (rest of a failed set) | closed
        self._set: SetParser | None = None
        self._request_bytes = 0
        self._eof = False

    @property
    def wants_input(self) -> bool:
        return not self._eof and self._mode != "closed" and len(self._buf) < READ_AHEAD_BYTES

    @property
    def closed(self) -> bool:
        return self._mode == "closed"

    def feed(self, data: bytes) -> None:
        if self._mode != "closed":
            self._buf += data

    def feed_eof(self) -> None:
        self._eof = True

    def next_event(self) -> Event | None:
        while self._mode != "closed":
            newline = self._buf.find(b"\n")
            if newline < 0:
                return self._on_partial_line()
            raw = bytes(self._buf[:newline])
            del self._buf[: newline + 1]
            event = self._on_line(raw)
            if event is not None:
                return event
        return None

    def _on_partial_line(self) -> Event | None:
        if len(self._buf) > self._max_line:
            return self._fail_and_close(ERR_IO, "line too long")
        if not self._eof:
            return None
        if self._mode == "set" and self._set is not None and not self._buf:
            # wireguard-go applies a set request cut off by EOF as far as it got
            request = self._set.finish()
            self._mode = "closed"
            return request
        self._mode = "closed"
        return CloseConnection("end of input")

    def _on_line(self, raw: bytes) -> Event | None:
        if len(raw) > self._max_line:
            return self._fail_and_close(ERR_IO, "line too long")
        try:
            line = raw.decode()
        except UnicodeDecodeError:
            line = raw.decode(errors="replace")
        match self._mode:
            case "op":
                return self._on_operation(line)
            case "get":
                self._mode = "op"
                if line:
                    return RequestFailed(ERR_INVALID, "trailing characters after get=1")
                return GetRequest()
            case "skip":
                if not line:
                    self._mode = "op"
                return None
            case _:
                return self._on_set_line(line, len(raw) + 1)

    def _on_operation(self, line: str) -> Event | None:
        if line == "get=1":
            self._mode = "get"
            return None
        if line == "set=1":
            self._mode = "set"
            self._set = SetParser()
            self._request_bytes = 0
            return None
        self._mode = "closed"
        operation = line.partition("=")[0][:80]  # never the value: it could be a key
        return CloseConnection(f"invalid UAPI operation: {operation!r}")

    def _on_set_line(self, line: str, size: int) -> Event | None:
        if self._set is None:
            raise RuntimeError("set line without a parser")
        if not line:
            request = self._set.finish()
            self._set = None
            self._mode = "op"
            return request
        self._request_bytes += size
        if self._request_bytes > self._max_request:
            return self._fail_and_close(ERR_IO, "set request too large")
        try:
            self._set.line(line)
        except UapiError as err:
            self._set = None
            self._mode = "skip"
            return RequestFailed(err.errno, str(err))
        return None

    def _fail_and_close(self, errno: int, reason: str) -> Event:
        self._mode = "closed"
        self._buf.clear()
        return RequestFailed(errno, reason)


# ---- the socket server ----


@dataclass(slots=True)
class _Client:
    sock: socket.socket
    proto: UapiConnection
    out: bytearray = field(default_factory=bytearray)
    events: int = 0  # epoll mask currently registered
    drained: int = 0  # bytes discarded after the reply to a request that ended the session


class UapiServer:
    """Serves one interface's control socket from an epoll loop, never blocking.

    `fileno()` is an epoll fd that is readable whenever a client needs service; register it
    in the main loop and call `handle_events()`. The socket file is removed on close() only
    if it is still the one this server created.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        backend: UapiBackend,
        *,
        max_connections: int = 16,
        max_request_bytes: int = MAX_REQUEST_BYTES,
    ) -> None:
        self.path = Path(path)
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
        cls, ifname: str, backend: UapiBackend, *, directory: str | os.PathLike[str] = SOCKET_DIR
    ) -> UapiServer:
        if not ifname or "/" in ifname or len(ifname.encode()) > 15:  # noqa: PLR2004 (IFNAMSIZ-1)
            raise ValueError(f"bad interface name {ifname!r}")
        folder = Path(directory)
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
        """Serve whatever is ready now; returns without waiting."""
        for fd, mask in self._epoll.poll(0, max_events):
            if fd == self._listener.fileno():
                self._accept()
            elif (client := self._clients.get(fd)) is not None:
                self._service(client, mask)

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
            if len(self._clients) >= self._max_connections:
                log.warning("uapi: too many connections, refusing one")
                sock.close()
                continue
            sock.setblocking(False)
            client = _Client(sock, UapiConnection(max_request_bytes=self._max_request))
            self._clients[sock.fileno()] = client
            client.events = select.EPOLLIN
            self._epoll.register(sock.fileno(), client.events)

    def _service(self, client: _Client, mask: int) -> None:
        if client.drained:
            self._drain(client)
            return
        if mask & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR) and not client.out:
            self._read(client)
        while True:
            self._process(client)  # stops after one reply: pipelined requests wait for it
            if not client.out:
                break
            if not self._write(client):
                return
            if client.out:
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


def _remove_if_stale(path: Path) -> None:
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
        _remove_if_stale(path)
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
