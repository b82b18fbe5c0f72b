"""Cryptographic primitives of WireGuard: BLAKE2s hash/MAC/HMAC/HKDF, X25519, the AEADs, TAI64N.

The per-packet AEAD lives in keypair.py (it keeps cipher objects and uses encrypt_into);
these helpers serve the handshake and cookies, where an allocation per call is fine.
"""

from __future__ import annotations

import hashlib
import hmac
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from nacl import bindings
from nacl._sodium import ffi as _ffi  # type: ignore[import-not-found] # pynacl's cffi module, no stubs
from nacl._sodium import lib as _sodium
from nacl.exceptions import CryptoError

from gateway.wireguard.constants import KEY_SIZE

_ZERO_KEY = bytes(KEY_SIZE)
_TAI64_BASE = 0x400000000000000A
_TAI64N = struct.Struct(">QI")
_NONCE = struct.Struct("<4xQ")
_XNONCE_SIZE = 24
_TAG_SIZE = 16


class CryptoFailure(Exception):
    """Authentication or key agreement failed: the message that caused it must be dropped."""


def hash_(*parts: bytes) -> bytes:
    h = hashlib.blake2s()
    for part in parts:
        h.update(part)
    return h.digest()


def mac(key: bytes, data: bytes | bytearray | memoryview) -> bytes:
    return hashlib.blake2s(data, digest_size=16, key=key).digest()


def hmac_blake2s(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.blake2s).digest()


def kdf1(key: bytes, data: bytes) -> bytes:
    prk = hmac_blake2s(key, data)
    return hmac_blake2s(prk, b"\x01")


def kdf2(key: bytes, data: bytes) -> tuple[bytes, bytes]:
    prk = hmac_blake2s(key, data)
    t0 = hmac_blake2s(prk, b"\x01")
    return t0, hmac_blake2s(prk, t0 + b"\x02")


def kdf3(key: bytes, data: bytes) -> tuple[bytes, bytes, bytes]:
    prk = hmac_blake2s(key, data)
    t0 = hmac_blake2s(prk, b"\x01")
    t1 = hmac_blake2s(prk, t0 + b"\x02")
    return t0, t1, hmac_blake2s(prk, t1 + b"\x03")


def clamp(private_key: bytes) -> bytes:
    k = bytearray(private_key)
    k[0] &= 248
    k[31] = (k[31] & 127) | 64
    return bytes(k)


def public_key(private_key: bytes) -> bytes:
    return bindings.crypto_scalarmult_base(clamp(private_key))


def dh(private_key: bytes, public: bytes) -> bytes:
    """X25519; an all-zero result (a low-order public key) raises CryptoFailure."""
    try:
        shared: bytes = bindings.crypto_scalarmult(clamp(private_key), public)
    except (CryptoError, RuntimeError) as exc:  # libsodium returns -1 for low-order points
        raise CryptoFailure("low-order public key") from exc
    if hmac.compare_digest(shared, _ZERO_KEY):
        raise CryptoFailure("all-zero shared secret")
    return shared


def nonce(counter: int) -> bytes:
    return _NONCE.pack(counter)


def aead_encrypt(key: bytes, counter: int, plaintext: bytes, aad: bytes) -> bytes:
    return ChaCha20Poly1305(key).encrypt(_NONCE.pack(counter), plaintext, aad)


def aead_decrypt(key: bytes, counter: int, ciphertext: bytes, aad: bytes) -> bytes:
    try:
        return ChaCha20Poly1305(key).decrypt(_NONCE.pack(counter), ciphertext, aad)
    except InvalidTag as exc:
        raise CryptoFailure("AEAD authentication failed") from exc


def xaead_encrypt(key: bytes, nonce24: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """XChaCha20-Poly1305 (cookie replies). Straight through pynacl's cffi library: its
    Python wrapper spends ~13 of its ~16 us per call checking arguments (measured), and a
    handshake flood asks for tens of thousands of cookie replies a second."""
    if len(key) != KEY_SIZE or len(nonce24) != _XNONCE_SIZE:
        raise ValueError("XChaCha20-Poly1305 takes a 32-byte key and a 24-byte nonce")
    out = _ffi.new("unsigned char[]", len(plaintext) + _TAG_SIZE)
    _sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(
        out, _ffi.NULL, plaintext, len(plaintext), aad, len(aad), _ffi.NULL, nonce24, key
    )
    return bytes(_ffi.buffer(out))


def xaead_decrypt(key: bytes, nonce24: bytes, ciphertext: bytes, aad: bytes) -> bytes:
    try:
        out: bytes = bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(
            ciphertext, aad, nonce24, key
        )
    except CryptoError as exc:
        raise CryptoFailure("XAEAD authentication failed") from exc
    return out


def tai64n(unix_time: float) -> bytes:
    """TAI64N label, nanoseconds whitened to 2^24 ns as wireguard-go does (no timing oracle)."""
    seconds = int(unix_time)
    nanos = int((unix_time - seconds) * 1e9) & ~0xFFFFFF
    return _TAI64N.pack(_TAI64_BASE + seconds, nanos)
