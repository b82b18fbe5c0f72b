"""Noise_IKpsk2 handshake (wireguard-go device/noise-protocol.go), both roles, no I/O.

One `Handshake` per peer. Every failure raises `CryptoFailure` or returns None so the caller
drops and counts the message; no state changes unless the whole message authenticated.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from gateway.wireguard.constants import (
    HANDSHAKE_INITIATION_RATE,
    INITIAL_CHAIN_KEY,
    INITIAL_HASH,
    KEY_SIZE,
)
from gateway.wireguard.crypto import (
    CryptoFailure,
    aead_decrypt,
    aead_encrypt,
    dh,
    hash_,
    kdf1,
    kdf2,
    kdf3,
    public_key,
)
from gateway.wireguard.drops import Drop
from gateway.wireguard.messages import Initiation, Response, build_initiation, build_response

ZERO_PSK = bytes(KEY_SIZE)


class State(enum.IntEnum):
    ZEROED = 0
    INITIATION_CREATED = 1
    INITIATION_CONSUMED = 2
    RESPONSE_CREATED = 3
    RESPONSE_CONSUMED = 4


@dataclass(slots=True)
class SessionKeys:
    """Transport keys derived at the end of a handshake."""

    send_key: bytes
    recv_key: bytes
    is_initiator: bool
    local_index: int
    remote_index: int


class Identity:
    """Our static key pair and the values derived from it."""

    def __init__(self, private_key: bytes) -> None:
        self.private_key = private_key
        self.public_key = public_key(private_key)
        self.hash0 = hash_(INITIAL_HASH, self.public_key)


class Handshake:
    """Handshake state with one peer."""

    def __init__(self, remote_static: bytes, preshared_key: bytes) -> None:
        self.remote_static = remote_static
        self.preshared_key = preshared_key
        self.remote_hash0 = hash_(INITIAL_HASH, remote_static)
        self._identity: Identity | None = None
        self._static_static: bytes | None = None
        self._static_static_known = True  # nothing to compute without an identity
        self.state = State.ZEROED
        self.chain_key = b""
        self.hash = b""
        self.local_ephemeral = b""
        self.remote_ephemeral = b""
        self.local_index = 0
        self.remote_index = 0
        self.last_timestamp = bytes(12)
        self.last_initiation_consumed = float("-inf")

    def set_identity(self, identity: Identity | None) -> None:
        """Our static key; None (no key) disables handshakes with this peer. The static-static
        DH runs on first use: a gateway with 100,000 peers would spend seconds on it at
        start-up for peers that may never connect."""
        self._identity = identity
        self._static_static = None
        self._static_static_known = identity is None

    @property
    def static_static(self) -> bytes | None:
        """DH(our static key, the peer's); None when there is no key or the peer's public key
        is unusable (low order)."""
        if not self._static_static_known:
            self._static_static_known = True
            if self._identity is not None:
                try:
                    self._static_static = dh(self._identity.private_key, self.remote_static)
                except CryptoFailure:
                    self._static_static = None
        return self._static_static

    def clear(self) -> None:
        self.state = State.ZEROED
        self.chain_key = self.hash = self.local_ephemeral = self.remote_ephemeral = b""
        self.local_index = self.remote_index = 0

    def create_initiation(
        self, identity: Identity, local_index: int, ephemeral_private: bytes, timestamp: bytes
    ) -> bytearray:
        if self.static_static is None:
            raise CryptoFailure("no static-static secret with this peer")
        eph_pub = public_key(ephemeral_private)
        h = self.remote_hash0
        ck = kdf1(INITIAL_CHAIN_KEY, eph_pub)
        h = hash_(h, eph_pub)
        ck, key = kdf2(ck, dh(ephemeral_private, self.remote_static))
        enc_static = aead_encrypt(key, 0, identity.public_key, h)
        h = hash_(h, enc_static)
        ck, key = kdf2(ck, self.static_static)
        enc_ts = aead_encrypt(key, 0, timestamp, h)
        h = hash_(h, enc_ts)
        self.chain_key, self.hash = ck, h
        self.local_ephemeral = ephemeral_private
        self.local_index = local_index
        self.state = State.INITIATION_CREATED
        return build_initiation(local_index, eph_pub, enc_static, enc_ts)

    def create_response(
        self, local_index: int, ephemeral_private: bytes
    ) -> tuple[bytearray, SessionKeys]:
        if self.state != State.INITIATION_CONSUMED:
            raise CryptoFailure("no consumed initiation to respond to")
        eph_pub = public_key(ephemeral_private)
        h = hash_(self.hash, eph_pub)
        ck = kdf1(self.chain_key, eph_pub)
        ck = kdf1(ck, dh(ephemeral_private, self.remote_ephemeral))
        ck = kdf1(ck, dh(ephemeral_private, self.remote_static))
        ck, tau, key = kdf3(ck, self.preshared_key)
        h = hash_(h, tau)
        enc_nothing = aead_encrypt(key, 0, b"", h)
        h = hash_(h, enc_nothing)
        msg = build_response(local_index, self.remote_index, eph_pub, enc_nothing)
        recv_key, send_key = kdf2(ck, b"")
        keys = SessionKeys(send_key, recv_key, False, local_index, self.remote_index)
        self.clear()
        return msg, keys

    def consume_response(self, identity: Identity, msg: Response) -> SessionKeys:
        if self.state != State.INITIATION_CREATED:
            raise CryptoFailure("response without a pending initiation")
        h = hash_(self.hash, msg.ephemeral)
        ck = kdf1(self.chain_key, msg.ephemeral)
        ck = kdf1(ck, dh(self.local_ephemeral, msg.ephemeral))
        ck = kdf1(ck, dh(identity.private_key, msg.ephemeral))
        ck, tau, key = kdf3(ck, self.preshared_key)
        h = hash_(h, tau)
        aead_decrypt(key, 0, msg.encrypted_nothing, h)
        send_key, recv_key = kdf2(ck, b"")
        keys = SessionKeys(send_key, recv_key, True, self.local_index, msg.sender)
        self.clear()
        return keys


class InitiationRejected(Exception):
    """An authenticated initiation that must still be dropped (replay or flood); names why."""

    def __init__(self, reason: Drop) -> None:
        super().__init__(str(reason))
        self.reason = reason


def consume_initiation(
    identity: Identity,
    msg: Initiation,
    find_handshake: Callable[[bytes], Handshake | None],
    now: float,
) -> Handshake | None:
    """Authenticate an initiation; returns the peer's handshake in INITIATION_CONSUMED.

    None: unknown peer. Raises CryptoFailure (bad crypto) or InitiationRejected.
    """
    h = hash_(identity.hash0, msg.ephemeral)
    ck = kdf1(INITIAL_CHAIN_KEY, msg.ephemeral)
    ck, key = kdf2(ck, dh(identity.private_key, msg.ephemeral))
    remote_static = aead_decrypt(key, 0, msg.encrypted_static, h)
    h = hash_(h, msg.encrypted_static)
    hs = find_handshake(remote_static)
    if hs is None:
        return None
    if hs.static_static is None:
        raise CryptoFailure("no static-static secret with this peer")
    ck, key = kdf2(ck, hs.static_static)
    timestamp = aead_decrypt(key, 0, msg.encrypted_timestamp, h)
    h = hash_(h, msg.encrypted_timestamp)
    if timestamp <= hs.last_timestamp:
        raise InitiationRejected(Drop.REPLAYED_TIMESTAMP)
    if now < hs.last_initiation_consumed + HANDSHAKE_INITIATION_RATE:
        raise InitiationRejected(Drop.HANDSHAKE_FLOOD)
    hs.chain_key, hs.hash = ck, h
    hs.remote_ephemeral = msg.ephemeral
    hs.remote_index = msg.sender
    hs.last_timestamp = timestamp
    hs.last_initiation_consumed = now
    hs.local_ephemeral = b""
    hs.state = State.INITIATION_CONSUMED
    return hs
