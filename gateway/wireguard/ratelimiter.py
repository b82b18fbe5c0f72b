"""Per-source-address token bucket for handshake messages under load (kernel ratelimiter.c),
and a plain token bucket for what is shared by all sources (cookie replies on the link).

Each source gets 20 packets/s with a burst of 5; IPv6 sources are keyed by their /64 so one
host cannot dodge the limit by walking its subnet. The table is bounded: when it is full, new
sources are refused (as the kernel does) until garbage collection, run at most once a second
from `allow`, drops entries idle for over a second (such an entry's bucket is full again, so
forgetting it changes no answer). Sans-I/O: the caller passes the time.
"""

from __future__ import annotations

NSEC_PER_SEC = 1_000_000_000
PACKETS_PER_SECOND = 20
PACKETS_BURSTABLE = 5
PACKET_COST = NSEC_PER_SEC // PACKETS_PER_SECOND
TOKEN_MAX = PACKET_COST * PACKETS_BURSTABLE
# The kernel's max_entries on a machine with more than 1 GiB of RAM (8192 buckets x 8).
DEFAULT_MAX_ENTRIES = 65536
GC_INTERVAL_NS = NSEC_PER_SEC
IDLE_EXPIRY_NS = NSEC_PER_SEC

_V4_BYTES = 4
_V6_BYTES = 16
_V6_PREFIX_BYTES = 8


class RateLimiter:
    """`allow(ip, now)` answers whether a handshake message from `ip` may be processed."""

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, got {max_entries}")
        self.max_entries = max_entries
        # key -> [tokens_ns, last_time_ns]
        self._entries: dict[bytes, list[int]] = {}
        self._next_gc_ns: int | None = None
        self.refused_full = 0  # new sources refused because the table was full

    def __len__(self) -> int:
        return len(self._entries)

    def allow(self, ip: bytes | bytearray | memoryview, now: float) -> bool:
        """Take one token for source `ip` (4 or 16 raw bytes) at time `now` (seconds).

        A bad address length is refused rather than raising.
        """
        size = len(ip)
        if size == _V4_BYTES:
            key = b"4" + bytes(ip)
        elif size == _V6_BYTES:
            key = b"6" + bytes(ip[:_V6_PREFIX_BYTES])
        else:
            return False
        return self.allow_key(key, now)

    def allow_key(self, key: bytes, now: float) -> bool:
        """Take one token for any `key` (e.g. an address and port: one flow) at `now`."""
        now_ns = round(now * NSEC_PER_SEC)
        if self._next_gc_ns is None or now_ns >= self._next_gc_ns:
            self.gc(now)
        entry = self._entries.get(key)
        if entry is None:
            if len(self._entries) >= self.max_entries:
                self.refused_full += 1
                return False
            self._entries[key] = [TOKEN_MAX - PACKET_COST, now_ns]
            return True
        tokens_ns, last_ns = entry
        # A clock that steps back refills nothing rather than draining the bucket.
        tokens_ns = min(TOKEN_MAX, tokens_ns + max(0, now_ns - last_ns))
        entry[1] = now_ns
        if tokens_ns >= PACKET_COST:
            entry[0] = tokens_ns - PACKET_COST
            return True
        entry[0] = tokens_ns
        return False

    def gc(self, now: float) -> int:
        """Drop entries idle for more than a second; returns how many were dropped."""
        now_ns = round(now * NSEC_PER_SEC)
        stale = [k for k, (_, last) in self._entries.items() if now_ns - last > IDLE_EXPIRY_NS]
        for key in stale:
            del self._entries[key]
        self._next_gc_ns = now_ns + GC_INTERVAL_NS
        return len(stale)

    def clear(self) -> None:
        self._entries.clear()


class TokenBucket:
    """One bucket for everyone: `take(now)` passes at most `rate` a second after a burst of
    `burst`. Guards a shared resource (the outgoing link), not fairness between sources."""

    def __init__(self, rate: float, burst: float) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"rate must be > 0 and burst >= 1, got {rate} and {burst}")
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._last = float("-inf")

    def take(self, now: float) -> bool:
        # A clock that steps back refills nothing.
        self._tokens = min(self.burst, self._tokens + max(0.0, now - self._last) * self.rate)
        self._last = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False
