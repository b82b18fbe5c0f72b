"""The userspace API's vocabulary: errno values, typed set operations and get snapshots, and
the `UapiBackend` the gateway implements (gateway/uapi/ re-exports all of it)."""

from __future__ import annotations

import errno as _errno
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from gateway.endpoint import Endpoint
from gateway.ipnet import IPNetwork
from gateway.wireguard.constants import KEY_SIZE

ERR_IO = -_errno.EIO
ERR_PROTOCOL = -_errno.EPROTO
ERR_INVALID = -_errno.EINVAL
ERR_PORT_IN_USE = -_errno.EADDRINUSE
ERR_UNKNOWN = -55  # wireguard-go's IpcErrorUnknown

ZERO_KEY = bytes(KEY_SIZE)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


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
