"""Cookies (WireGuard paper 5.4.7): mac1/mac2, cookie replies, and the under-load decision."""

from __future__ import annotations

import hmac
import struct
from collections.abc import Callable
from enum import IntEnum

from gateway.wireguard.constants import (
    COOKIE_NONCE_SIZE,
    COOKIE_REFRESH_TIME,
    COOKIE_REPLIES_BURST,
    COOKIE_REPLIES_PER_SECOND,
    COOKIE_SIZE,
    LABEL_COOKIE,
    LABEL_MAC1,
    UNDER_LOAD_AFTER_TIME,
)
from gateway.wireguard.crypto import CryptoFailure, hash_, mac, xaead_decrypt, xaead_encrypt
from gateway.wireguard.messages import Buffer, CookieReply, build_cookie_reply
from gateway.wireguard.ratelimiter import RateLimiter, TokenBucket

_NO_MAC = bytes(16)
_SENDER = struct.Struct("<4xI")


class CookieChecker:
    """Our side as receiver of handshake messages: checks MACs and makes cookie replies."""

    def __init__(self, public_key: bytes, rng: Callable[[int], bytes]) -> None:
        self._rng = rng
        self.public_key = public_key
        self.mac1_key = hash_(LABEL_MAC1, public_key)
        self.cookie_key = hash_(LABEL_COOKIE, public_key)
        self._secret = b""
        self._secret_time = float("-inf")

    def check_mac1(self, msg: Buffer, mac1_end: int) -> bool:
        expected = mac(self.mac1_key, msg[:mac1_end])
        return hmac.compare_digest(expected, msg[mac1_end : mac1_end + 16])

    def _cookie(self, source: bytes, now: float) -> bytes:
        if now - self._secret_time > COOKIE_REFRESH_TIME:
            self._secret = self._rng(32)
            self._secret_time = now
        return mac(self._secret, source)

    def check_mac2(self, msg: Buffer, mac1_end: int, source: bytes, now: float) -> bool:
        mac2_end = mac1_end + 16
        if msg[mac2_end : mac2_end + 16] == _NO_MAC:  # a sender without a cookie: no MAC to try
            return False
        expected = mac(self._cookie(source, now), msg[:mac2_end])
        return hmac.compare_digest(expected, msg[mac2_end : mac2_end + 16])

    def cookie_reply(
        self, msg: Buffer, mac1_end: int, receiver: int, source: bytes, now: float
    ) -> bytes:
        nonce = self._rng(COOKIE_NONCE_SIZE)
        mac1 = bytes(msg[mac1_end : mac1_end + 16])
        sealed = xaead_encrypt(self.cookie_key, nonce, self._cookie(source, now), mac1)
        return build_cookie_reply(receiver, nonce, sealed)


class CookieGenerator:
    """Our side as sender to one peer: fills in mac1/mac2 and keeps the cookie it gave us."""

    def __init__(self, peer_public_key: bytes) -> None:
        self.mac1_key = hash_(LABEL_MAC1, peer_public_key)
        self.cookie_key = hash_(LABEL_COOKIE, peer_public_key)
        self._cookie = b""
        self._cookie_time = float("-inf")
        self._last_mac1 = b""

    def add_macs(self, msg: bytearray, mac1_end: int, now: float) -> None:
        mac1 = mac(self.mac1_key, bytes(msg[:mac1_end]))
        msg[mac1_end : mac1_end + 16] = mac1
        self._last_mac1 = mac1
        mac2_end = mac1_end + 16
        if self._cookie and now - self._cookie_time <= COOKIE_REFRESH_TIME:
            msg[mac2_end : mac2_end + 16] = mac(self._cookie, bytes(msg[:mac2_end]))
        else:
            msg[mac2_end : mac2_end + 16] = _NO_MAC

    def consume_reply(self, reply: CookieReply, now: float) -> bool:
        """Accept a cookie reply only for the last mac1 we sent."""
        if not self._last_mac1:
            return False
        try:
            cookie = xaead_decrypt(
                self.cookie_key, reply.nonce, reply.encrypted_cookie, self._last_mac1
            )
        except CryptoFailure:
            return False
        if len(cookie) != COOKIE_SIZE:
            return False
        self._cookie = cookie
        self._cookie_time = now
        return True


class LoadMonitor:
    """Under load when more than `threshold` handshake messages arrive within one second.

    Sans-I/O stand-in for the kernel's "handshake queue 1/8 full": the state holds for
    UNDER_LOAD_AFTER_TIME after the condition was last seen, as `IsUnderLoad` does. A
    threshold of None is never under load (a gate upstream decides).
    """

    def __init__(self, threshold: int | None) -> None:
        self.threshold = threshold
        self._window_start = float("-inf")
        self._count = 0
        self._until = float("-inf")

    def record(self, now: float) -> bool:
        """Count one handshake message; True if we are now under load."""
        if now - self._window_start >= 1.0:
            self._window_start = now
            self._count = 0
        self._count += 1
        if self.threshold is not None and self._count > self.threshold:
            self._until = now + UNDER_LOAD_AFTER_TIME
        return now < self._until


class Admission(IntEnum):  # an int: hashed in C, it keys dicts on the per-datagram path
    ADMIT = 0  # not under load, or a valid mac2 within its source address's rate
    BAD_MAC1 = 1
    COOKIE = 2  # no valid mac2: answer with the cookie reply, drop the message
    COOKIE_LIMITED = 3  # no valid mac2, and its flow's or the link's budget spent
    RATE_LIMITED = 4  # a valid mac2 over its source address's rate
    MALFORMED = 5  # not a handshake message's size (the gate's check; the Device's is its own)


class UnderLoad:
    """The protocol's answer to load, as wireguard-go's RoutineHandshake: mac1 always;
    under load a handshake message without a valid mac2 gets a cookie reply and goes no
    further, and only messages with a valid mac2 are rate-limited per source address
    (RateLimiter: 20/s, burst 5). A flooder that shares a client's address (one NAT)
    therefore cannot spend the client's share: its messages without a cookie never touch
    the per-address budget, and the client's retry with its cookie gets through.

    Cookie replies are limited by the link's budget (COOKIE_REPLIES_PER_SECOND) and, per
    flow (address and port, so never the neighbour behind the same NAT), at the same
    20/s: a client sends an initiation every 5 s, a flood far more. That per-flow limit
    also lets a flood of messages without any mac2 (all zeros: no cookie to check) be
    dropped before mac1 is computed, so the flood costs little more than reading it.
    """

    def __init__(self, threshold: int | None) -> None:
        self.load = LoadMonitor(threshold)
        self.limiter = RateLimiter()
        self.cookie_flows = RateLimiter()
        self.cookies = TokenBucket(COOKIE_REPLIES_PER_SECOND, COOKIE_REPLIES_BURST)

    def admit(  # noqa: PLR0911, PLR0913, PLR0917 # a return per verdict; positional: per datagram
        self,
        checker: CookieChecker,
        msg: Buffer,
        mac1_end: int,
        ip: bytes,
        source: bytes,
        now: float,
    ) -> tuple[Admission, bytes | None]:
        """The verdict on an initiation or response (of the right size), and the cookie
        reply to send with Admission.COOKIE. `ip` (4 or 16 bytes) keys the rate limit,
        `source` (ip and port) the cookie and its flow's budget."""
        under_load = self.load.record(now)
        mac2_end = mac1_end + 16
        no_mac2 = msg[mac2_end : mac2_end + 16] == _NO_MAC
        if under_load and no_mac2 and not self.cookie_flows.allow_key(source, now):
            return Admission.COOKIE_LIMITED, None  # before mac1: a flood's cheapest path
        if not checker.check_mac1(msg, mac1_end):
            return Admission.BAD_MAC1, None
        if not under_load:
            return Admission.ADMIT, None
        if no_mac2 or not checker.check_mac2(msg, mac1_end, source, now):
            if not no_mac2 and not self.cookie_flows.allow_key(source, now):
                return Admission.COOKIE_LIMITED, None
            if not self.cookies.take(now):
                return Admission.COOKIE_LIMITED, None
            (sender,) = _SENDER.unpack_from(msg)
            return Admission.COOKIE, checker.cookie_reply(msg, mac1_end, sender, source, now)
        if not self.limiter.allow(ip, now):
            return Admission.RATE_LIMITED, None
        return Admission.ADMIT, None
