"""A configured peer: its settings, handshake, keypairs, staged packets, timers, counters."""

from __future__ import annotations

import math
from collections import deque

from gateway.endpoint import Endpoint
from gateway.wireguard.allowedips import AllowedIPs, Network
from gateway.wireguard.constants import KEY_SIZE
from gateway.wireguard.cookie import CookieGenerator
from gateway.wireguard.keypair import Keypairs
from gateway.wireguard.noise import ZERO_PSK, Handshake
from gateway.wireguard.timers import PeerTimers


class Peer:
    """Identity-hashed (it is the value stored in the allowed-IPs table)."""

    def __init__(self, public_key: bytes, *, preshared_key: bytes | None = None) -> None:
        if len(public_key) != KEY_SIZE:
            raise ValueError(f"peer public key must be {KEY_SIZE} bytes, got {len(public_key)}")
        self.public_key = public_key
        self.handshake = Handshake(public_key, ZERO_PSK)
        self.preshared_key = preshared_key
        self.endpoint: Endpoint | None = None
        # When the packet that set `endpoint` arrived: a handshake the driver held back
        # (queued behind transport) never moves it back to an older source.
        self.endpoint_arrival = -math.inf
        self.persistent_keepalive = 0
        self._table: AllowedIPs[Peer] | None = None
        self.last_handshake: float | None = None
        self.rx_bytes = self.tx_bytes = self.rx_packets = self.tx_packets = 0
        self.keypairs = Keypairs()
        self.staged: deque[bytes] = deque()
        self.timers = PeerTimers()
        self.order = 0  # when the device added it (the device sets it)
        self.cookies = CookieGenerator(public_key)

    def bind_allowed_ips(self, table: AllowedIPs[Peer]) -> None:
        self._table = table

    @property
    def allowed_ips(self) -> list[Network]:
        """The prefixes routed to this peer (read from the device's table)."""
        return [] if self._table is None else self._table.prefixes_of(self)

    @property
    def preshared_key(self) -> bytes | None:
        psk = self.handshake.preshared_key
        return None if psk == ZERO_PSK else psk

    @preshared_key.setter
    def preshared_key(self, value: bytes | None) -> None:
        if value is not None and len(value) != KEY_SIZE:
            raise ValueError(f"preshared key must be {KEY_SIZE} bytes, got {len(value)}")
        self.handshake.preshared_key = value or ZERO_PSK

    def __repr__(self) -> str:
        return f"Peer({self.public_key.hex()[:16]}…, endpoint={self.endpoint})"
