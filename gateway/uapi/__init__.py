"""The WireGuard cross-platform userspace API (what `wg` speaks to wireguard-go).

A sans-I/O codec (`UapiConnection` turns bytes into `GetRequest` / `SetRequest` events;
`format_get` and `format_errno` make the replies) and a nonblocking unix-socket server for
`/var/run/wireguard/<ifname>.sock` that fits an epoll loop (`UapiServer.fileno()` is an epoll
fd; call `handle_events()` when it is readable). The gateway plugs in through `UapiBackend`.

Errors follow wireguard-go: a reply ends with `errno=N` where N is 0 or a negative errno
(-EINVAL for a bad key or value, -EPROTO for a line without '=', -EIO for input it cannot
read, -EADDRINUSE when the listen port is taken, -55 for anything else). A `set` request is
parsed completely before anything is applied, so a bad line changes nothing.

Modules: `types` (errno values, requests, snapshots, the backend protocol), `codec` (set
bodies parsed, get replies formatted), `connection` (one client, sans I/O), `server` (the
unix socket). The names below are the package's public API.
"""

from gateway.uapi.codec import format_errno, format_get, format_set, parse_set
from gateway.uapi.connection import UapiConnection
from gateway.uapi.server import SOCKET_DIR, UapiServer
from gateway.uapi.types import (
    ERR_INVALID,
    ERR_IO,
    ERR_PORT_IN_USE,
    ERR_PROTOCOL,
    ERR_UNKNOWN,
    ZERO_KEY,
    CloseConnection,
    DeviceState,
    Event,
    GetRequest,
    PeerChange,
    PeerState,
    RequestFailed,
    SetRequest,
    UapiBackend,
    UapiError,
)

__all__ = [
    "ERR_INVALID",
    "ERR_IO",
    "ERR_PORT_IN_USE",
    "ERR_PROTOCOL",
    "ERR_UNKNOWN",
    "SOCKET_DIR",
    "ZERO_KEY",
    "CloseConnection",
    "DeviceState",
    "Event",
    "GetRequest",
    "PeerChange",
    "PeerState",
    "RequestFailed",
    "SetRequest",
    "UapiBackend",
    "UapiConnection",
    "UapiError",
    "UapiServer",
    "format_errno",
    "format_get",
    "format_set",
    "parse_set",
]
