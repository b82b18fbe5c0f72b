"""A test double of the gateway's UAPI backend: an in-memory WireGuard configuration.

It applies UAPI set requests as wireguard-go does: allowed IPs are owned by one peer at a
time (adding a prefix moves it), `update_only` never creates a peer, a peer with the
device's own public key is ignored, and private keys are clamped. Tests and benchmarks of
the UAPI codec and server use it in place of the crypto process's `DeviceBackend`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from nacl.bindings import crypto_scalarmult_base

from gateway.endpoint import Endpoint
from gateway.ipnet import IPNetwork
from gateway.telemetry.stats import PeerStats
from gateway.uapi import (
    ZERO_KEY,
    DeviceState,
    PeerChange,
    PeerState,
    SetRequest,
)
from gateway.wireguard.crypto import clamp


@dataclass(slots=True)
class _Peer:
    preshared_key: bytes | None = None
    endpoint: Endpoint | None = None
    keepalive: int = 0
    allowed_ips: dict[IPNetwork, None] = field(default_factory=dict)  # ordered set


class UapiModel:
    """Device configuration in memory. `traffic` (optional) supplies per-peer counters and
    handshake times for `get` (e.g. `lambda: region.snapshot().peers`)."""

    def __init__(self, traffic: Callable[[], Iterable[PeerStats]] | None = None) -> None:
        self.private_key: bytes | None = None
        self.public_key: bytes | None = None
        self.listen_port = 0
        self.fwmark = 0
        self.peers: dict[bytes, _Peer] = {}
        self._owner: dict[IPNetwork, bytes] = {}
        self._traffic = traffic

    def apply(self, request: SetRequest) -> int:
        if request.private_key is not None:
            self._set_private_key(request.private_key)
        if request.listen_port is not None:
            self.listen_port = request.listen_port
        if request.fwmark is not None:
            self.fwmark = request.fwmark
        if request.replace_peers:
            self.peers.clear()
            self._owner.clear()
        for change in request.peers:
            self._apply_peer(change)
        return 0

    def _apply_peer(self, change: PeerChange) -> None:
        key = change.public_key
        if key == self.public_key:
            return
        if change.remove:
            self._remove_peer(key)
            return
        peer = self.peers.get(key)
        if peer is None:
            if change.update_only:
                return
            peer = self.peers[key] = _Peer()
        if change.preshared_key is not None:
            psk = change.preshared_key
            peer.preshared_key = None if psk == ZERO_KEY else psk
        if change.endpoint is not None:
            peer.endpoint = change.endpoint
        if change.persistent_keepalive_interval is not None:
            peer.keepalive = change.persistent_keepalive_interval
        if change.replace_allowed_ips:
            for prefix in peer.allowed_ips:
                del self._owner[prefix]
            peer.allowed_ips.clear()
        for prefix in change.removed_allowed_ips:
            if self._owner.get(prefix) == key:
                del self._owner[prefix]
                del peer.allowed_ips[prefix]
        for prefix in change.allowed_ips:
            self._insert(prefix, key, peer)

    def get_snapshot(self) -> DeviceState:
        traffic = {p.public_key: p for p in self._traffic()} if self._traffic else {}
        peers = []
        for key, peer in self.peers.items():
            counters = traffic.get(key)
            peers.append(
                PeerState(
                    public_key=key,
                    preshared_key=peer.preshared_key,
                    endpoint=peer.endpoint,
                    last_handshake_ns=round(counters.last_handshake * 1e9) if counters else 0,
                    tx_bytes=counters.tx_bytes if counters else 0,
                    rx_bytes=counters.rx_bytes if counters else 0,
                    persistent_keepalive_interval=peer.keepalive,
                    allowed_ips=tuple(peer.allowed_ips),
                )
            )
        return DeviceState(self.private_key, self.listen_port, self.fwmark, tuple(peers))

    def _set_private_key(self, key: bytes) -> None:
        if key == ZERO_KEY:
            self.private_key = self.public_key = None
            return
        self.private_key = clamp(key)
        self.public_key = crypto_scalarmult_base(self.private_key)
        self._remove_peer(self.public_key)  # a peer cannot be ourselves

    def _remove_peer(self, key: bytes) -> None:
        peer = self.peers.pop(key, None)
        if peer is not None:
            for prefix in peer.allowed_ips:
                del self._owner[prefix]

    def _insert(self, prefix: IPNetwork, key: bytes, peer: _Peer) -> None:
        owner = self._owner.get(prefix)
        if owner is not None and owner != key:
            del self.peers[owner].allowed_ips[prefix]
        self._owner[prefix] = key
        peer.allowed_ips[prefix] = None
