"""The UDP process's first line against handshake floods: under load, each source address
passes handshake messages (initiation, response, cookie reply) at the kernel's rate.

Under load means more than DEFAULT_UNDER_LOAD_THRESHOLD handshake messages within a second
(the Device's criterion, gateway/wireguard/cookie.py LoadMonitor); then a source address
gets 20 a second with a burst of 5 (gateway/wireguard/ratelimiter.py, the kernel's figures).
A flooding host's excess is then dropped before it costs a ring slot, a copy and the crypto
process's time, so the UDP process keeps reading the socket and sessions' datagrams are not
lost in an overflowing socket buffer. Sans-I/O: the caller passes the source address (raw,
as framing.remote_address reads it) and the time.
"""

from __future__ import annotations

from gateway.wireguard.constants import DEFAULT_UNDER_LOAD_THRESHOLD
from gateway.wireguard.cookie import LoadMonitor
from gateway.wireguard.ratelimiter import RateLimiter


class HandshakeGate:
    def __init__(self, under_load_threshold: int = DEFAULT_UNDER_LOAD_THRESHOLD) -> None:
        self._load = LoadMonitor(under_load_threshold)
        self._limiter = RateLimiter()

    def admit(self, source: bytes, now: float) -> bool:
        """Whether a handshake message from the raw address `source` goes on to the crypto
        process."""
        if not self._load.record(now):
            return True
        return self._limiter.allow(source, now)
