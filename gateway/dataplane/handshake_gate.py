"""The UDP process's first line against handshake floods: the protocol's answer to load,
before the ring.

Under load (more than DEFAULT_UNDER_LOAD_THRESHOLD handshake messages within a second,
gateway/wireguard/cookie.py LoadMonitor) an initiation or response must carry a valid mac1
(else dropped) and a valid mac2: without one it is answered here with a cookie reply and
dropped; with one it passes at its source address's rate (20/s, burst 5). Cookie replies
are limited per flow (address and port) and by the link's budget, never per address. Core
logic: `gateway.wireguard.cookie.UnderLoad`, as the Device's. A flooder sharing a client's
address (one NAT) then costs the client nothing: its messages without a cookie never
touch the per-address budget, and the client's retry with its cookie gets through. Cookie
replies to us (no MACs) pass at their source's rate under load.

The gate needs only the interface's public key (mac1 and cookie keys; the crypto process
publishes it in the stats segment) and a cookie secret of its own. The crypto process's
Device then never judges load itself (cryptoproc.build_device): two secrets would answer
each other's cookies. Sans-I/O: the caller passes the ring message header, the datagram
and the time.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from gateway.dataplane.framing import remote_address, remote_port
from gateway.wireguard.constants import (
    DEFAULT_UNDER_LOAD_THRESHOLD,
    INITIATION_SIZE,
    MESSAGE_COOKIE_REPLY,
    MESSAGE_INITIATION,
    MESSAGE_RESPONSE,
    RESPONSE_SIZE,
)
from gateway.wireguard.cookie import Admission, CookieChecker, UnderLoad
from gateway.wireguard.messages import INITIATION_MAC1_END, RESPONSE_MAC1_END
from gateway.wireguard.ratelimiter import RateLimiter

_MAC1_END = {MESSAGE_INITIATION: INITIATION_MAC1_END, MESSAGE_RESPONSE: RESPONSE_MAC1_END}
_SIZE = {MESSAGE_INITIATION: INITIATION_SIZE, MESSAGE_RESPONSE: RESPONSE_SIZE}
KEY_RECHECK = 0.5  # seconds between looks at the published public key


class HandshakeGate:
    """`admit(header, datagram, now)` for each handshake message, in arrival order."""

    def __init__(
        self,
        public_key: Callable[[], bytes | None],
        under_load_threshold: int = DEFAULT_UNDER_LOAD_THRESHOLD,
        rng: Callable[[int], bytes] = os.urandom,
    ) -> None:
        """`public_key` answers the interface's current public key (None: not known yet,
        then everything passes and the Device decides)."""
        self._public_key = public_key
        self._key_expires = float("-inf")
        self._rng = rng
        self._checker: CookieChecker | None = None
        self._under_load = UnderLoad(under_load_threshold)
        self._cookie_replies = RateLimiter()
        self.reply: bytes | None = None  # the cookie reply of the last Admission.COOKIE

    def _refresh_key(self, now: float) -> None:
        """Look at the published public key again (a `wg set private-key` shows within
        KEY_RECHECK) and make a new checker when it changed."""
        key = self._public_key()
        if key is None:
            self._checker = None
        elif self._checker is None or self._checker.public_key != key:
            self._checker = CookieChecker(key, self._rng)
        self._key_expires = now + KEY_RECHECK

    def admit(self, header: bytes, datagram: bytes | memoryview, now: float) -> Admission:
        """The verdict on a handshake message from the endpoint in `header` (framing.py's
        ring header, or the whole ring message); with Admission.COOKIE, `reply` holds the
        cookie reply to send back."""
        self.reply = None
        ip = remote_address(header)
        kind = datagram[0]
        if kind == MESSAGE_COOKIE_REPLY:
            if self._under_load.load.record(now) and not self._cookie_replies.allow(ip, now):
                return Admission.RATE_LIMITED
            return Admission.ADMIT
        if now >= self._key_expires:
            self._refresh_key(now)
        checker = self._checker
        if checker is None:
            return Admission.ADMIT
        if len(datagram) != _SIZE[kind] or datagram[1] or datagram[2] or datagram[3]:
            return Admission.MALFORMED
        verdict, self.reply = self._under_load.admit(
            checker, datagram, _MAC1_END[kind], ip, ip + remote_port(header), now
        )
        return verdict
