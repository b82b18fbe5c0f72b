"""Rate limit for the ICMP errors the gateway generates, per peer (as the kernel's icmp_ratelimit).

A token bucket per peer: `BURST` errors at once, then one per `INTERVAL` seconds, like the
kernel's per-destination limit (icmp_ratelimit = 1 s, burst of 6). A peer that keeps sending
denied packets gets a few prompt errors (so a connect() fails at once with EHOSTUNREACH)
without turning the gateway into an ICMP amplifier. Bounded: at most `MAX_PEERS` buckets;
when full, the table is cleared (a forgotten bucket only means a fresh burst).
"""

from __future__ import annotations

from collections.abc import Hashable

BURST = 6.0
INTERVAL = 1.0
MAX_PEERS = 65536


class IcmpErrorLimiter:
    __slots__ = ("_buckets", "burst", "interval")

    def __init__(self, burst: float = BURST, interval: float = INTERVAL) -> None:
        self.burst = burst
        self.interval = interval
        # peer -> (tokens, time of the last update)
        self._buckets: dict[Hashable, tuple[float, float]] = {}

    def allow(self, peer: Hashable, now: float) -> bool:
        tokens, last = self._buckets.get(peer, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) / self.interval)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        if peer not in self._buckets and len(self._buckets) >= MAX_PEERS:
            self._buckets.clear()
        self._buckets[peer] = (tokens, now)
        return allowed
