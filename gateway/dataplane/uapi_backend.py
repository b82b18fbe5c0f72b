"""The crypto process's side of the WireGuard userspace API (`wg show`, `wg set`, ...).

The Device lives in the crypto process, so `get` and `set` are answered there. A listen-port
change is checked here (can the port be bound?) and carried out by the supervisor, which
owns the UDP socket: it binds the new port and restarts the UDP process on it.
"""

from __future__ import annotations

import errno
import logging
import socket
import time
from collections.abc import Callable

from gateway.dataplane.framing import encode_endpoint
from gateway.endpoint import Endpoint
from gateway.keys import public_key
from gateway.resources.proxy_ranges import proxy_range_holding
from gateway.uapi import (
    ERR_INVALID,
    ERR_PORT_IN_USE,
    ZERO_KEY,
    DeviceState,
    PeerChange,
    PeerState,
    SetRequest,
)
from gateway.wireguard.device import UNCHANGED, Device

log = logging.getLogger(__name__)


def _port_free(port: int) -> bool:
    """Whether a UDP socket could bind `port` on all addresses right now."""
    if port == 0:
        return True
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            probe.bind(("::", port))
    except OSError as exc:
        if exc.errno == errno.EAFNOSUPPORT:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe4:
                try:
                    probe4.bind(("0.0.0.0", port))  # noqa: S104 - the gateway listens on all addresses
                except OSError:
                    return False
            return True
        return False
    return True


def _frameable(endpoint: Endpoint) -> bool:
    """Whether the rings to the UDP process can carry this address (a scoped IPv6 address
    such as fe80::1%eth0 cannot: the loop would fail on the first datagram to it)."""
    try:
        encode_endpoint(endpoint)
    except (OSError, ValueError):
        return False
    return True


class DeviceBackend:
    """Implements gateway.uapi.UapiBackend on the crypto process's Device."""

    def __init__(
        self,
        device: Device,
        *,
        listen_port: int,
        request_listen_port: Callable[[int], None],
        on_change: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.device = device
        self.listen_port = listen_port
        self.fwmark = 0
        # Set while DNS resources exist: allowed IPs inside the proxy ranges are refused,
        # as check-config refuses them in the file.
        self.refuse_proxy_ranges = False
        self._request_listen_port = request_listen_port
        self._on_change = on_change
        self._clock = clock

    def get_snapshot(self) -> DeviceState:
        peers = []
        for peer in self.device.peers():
            handshake_ns = 0
            if peer.last_handshake is not None:
                handshake_ns = int((peer.last_handshake + self.device.unix_time_offset) * 1e9)
            peers.append(
                PeerState(
                    public_key=peer.public_key,
                    preshared_key=peer.preshared_key,
                    endpoint=peer.endpoint,
                    last_handshake_ns=handshake_ns,
                    tx_bytes=peer.tx_bytes,
                    rx_bytes=peer.rx_bytes,
                    persistent_keepalive_interval=peer.persistent_keepalive or 0,
                    allowed_ips=list(peer.allowed_ips),
                )
            )
        return DeviceState(
            private_key=self.device.private_key,
            listen_port=self.listen_port,
            fwmark=self.fwmark,
            peers=peers,
        )

    def apply(self, request: SetRequest) -> int:
        """Apply the whole request or nothing; 0 or a negative errno."""
        error = self._check(request)
        if error:
            return error
        own_key = self.device.public_key
        if request.private_key is not None and request.private_key != ZERO_KEY:
            own_key = public_key(request.private_key)
        now = self._clock()
        device = self.device
        if request.private_key is not None:
            device.set_private_key(None if request.private_key == ZERO_KEY else request.private_key)
        if request.fwmark is not None:
            self.fwmark = request.fwmark  # recorded for `wg show`; no policy routing here
        if request.replace_peers:
            for peer in list(device.peers()):
                device.remove_peer(peer.public_key)
        for change in request.peers:
            if own_key is None or change.public_key != own_key:  # wireguard-go ignores our key
                self._apply_peer(change, now)
        if request.listen_port is not None and request.listen_port != self.listen_port:
            self._request_listen_port(request.listen_port)
            if request.listen_port:
                self.listen_port = request.listen_port
        self._on_change()
        return 0

    def _check(self, request: SetRequest) -> int:
        port = request.listen_port
        if port is not None and port != self.listen_port and not _port_free(port):
            return ERR_PORT_IN_USE
        for change in request.peers:
            keepalive = change.persistent_keepalive_interval
            if keepalive is not None and not 0 <= keepalive <= 0xFFFF:  # noqa: PLR2004 - u16
                return ERR_INVALID
            if change.endpoint is not None and not _frameable(change.endpoint):
                return ERR_INVALID
            if self.refuse_proxy_ranges:
                for network in change.allowed_ips:
                    proxy = proxy_range_holding(network)
                    if proxy is not None:
                        log.warning(
                            "wg set refused: allowed IP %s lies in the DNS proxy range %s",
                            network,
                            proxy,
                        )
                        return ERR_INVALID
        return 0

    def _apply_peer(self, change: PeerChange, now: float) -> None:
        device = self.device
        if change.remove:
            device.remove_peer(change.public_key)
            return
        if change.update_only and device.peer(change.public_key) is None:
            return
        psk = change.preshared_key
        endpoint = change.endpoint
        keepalive = change.persistent_keepalive_interval
        peer = device.upsert_peer(
            change.public_key,
            preshared_key=UNCHANGED if psk is None else (None if psk == ZERO_KEY else psk),
            endpoint=UNCHANGED if endpoint is None else endpoint,
            persistent_keepalive=UNCHANGED if keepalive is None else keepalive,
            allowed_ips=change.allowed_ips,
            replace_allowed_ips=change.replace_allowed_ips,
            now=now,
        )
        for network in change.removed_allowed_ips:
            device.remove_allowed_ip(peer, network)
