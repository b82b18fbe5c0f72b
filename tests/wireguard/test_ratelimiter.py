from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.wireguard.ratelimiter import PACKETS_BURSTABLE, PACKETS_PER_SECOND, RateLimiter

COST = 1 / PACKETS_PER_SECOND
V4 = (8182).to_bytes(4, "big")
V6 = (1212).to_bytes(4, "big") + (289188).to_bytes(4, "big") + bytes(8)

# The kernel's selftest/ratelimiter.c timings: (allowed, seconds to wait before asking).
KERNEL_TIMINGS = [(True, 0.0)] * PACKETS_BURSTABLE + [
    (False, 0.0),
    (True, COST),
    (False, 0.0),
    (True, 2 * COST),
    (True, 0.0),
    (False, 0.0),
]


def _v6_with_low_bits(i: int) -> bytes:
    return V6[:8] + i.to_bytes(4, "big") + i.to_bytes(4, "big")


def _other_v6_prefix(i: int) -> bytes:
    return (1212 + i + 1).to_bytes(4, "big") + V6[4:]


def _other_v4(i: int) -> bytes:
    return (8182 + i + 1).to_bytes(4, "big")


def test_kernel_selftest_timings() -> None:
    limiter = RateLimiter()
    now = 100.0
    for i, (expected, wait) in enumerate(KERNEL_TIMINGS):
        now += wait
        assert limiter.allow(V4, now) is expected, i
        # Another source is unaffected (it is fresh every time, as in the kernel test).
        assert limiter.allow(_other_v4(i), now), i
        # IPv6: the low 64 bits change every step but it is the same /64 bucket.
        assert limiter.allow(_v6_with_low_bits(i), now) is expected, i
        assert limiter.allow(_other_v6_prefix(i), now), i


def test_refill_is_capped_at_burst() -> None:
    limiter = RateLimiter()
    assert limiter.allow(V4, 0.0)
    results = [limiter.allow(V4, 3600.0) for _ in range(PACKETS_BURSTABLE + 2)]
    assert results == [True] * PACKETS_BURSTABLE + [False, False]


def test_sustained_rate_is_twenty_per_second() -> None:
    limiter = RateLimiter()
    now = 0.0
    allowed = 0
    for _ in range(10_000):  # 10 s at 1000 attempts/s
        allowed += limiter.allow(V4, now)
        now += 0.001
    assert allowed >= PACKETS_BURSTABLE + 10 * PACKETS_PER_SECOND - 2
    assert allowed <= PACKETS_BURSTABLE + 10 * PACKETS_PER_SECOND + 1


def test_capacity_refuses_new_sources_when_full() -> None:
    limiter = RateLimiter(max_entries=64)
    results = [limiter.allow(i.to_bytes(4, "big"), 5.0) for i in range(65)]
    assert results == [True] * 64 + [False]
    assert limiter.refused_full == 1
    assert len(limiter) == 64
    # Known sources still get their tokens while the table is full.
    assert limiter.allow((3).to_bytes(4, "big"), 5.0)


def test_garbage_collection_drops_idle_entries_and_frees_room() -> None:
    limiter = RateLimiter(max_entries=8)
    for i in range(8):
        assert limiter.allow(i.to_bytes(4, "big"), 10.0)
    assert not limiter.allow(b"\x09\x09\x09\x09", 10.5)
    assert limiter.allow(b"\x00\x00\x00\x00", 10.9)  # keeps source 0 alive
    # More than a second later, the next call collects the 7 idle entries.
    assert limiter.allow(b"\x09\x09\x09\x09", 11.6)
    assert len(limiter) == 2
    assert limiter.gc(11.6) == 0


def test_bad_lengths_refused_without_raising() -> None:
    limiter = RateLimiter()
    for bad in (b"", b"\x01\x02\x03", bytes(5), bytes(15), bytes(17)):
        assert not limiter.allow(bad, 0.0)
    assert len(limiter) == 0


def test_clock_stepping_back_does_not_crash_or_refill() -> None:
    limiter = RateLimiter()
    for _ in range(PACKETS_BURSTABLE):
        assert limiter.allow(V4, 50.0)
    assert not limiter.allow(V4, 40.0)
    assert not limiter.allow(V4, 40.0)


def test_max_entries_validated() -> None:
    with pytest.raises(ValueError, match="max_entries"):
        RateLimiter(max_entries=0)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 200_000_000)), max_size=80))
def test_matches_token_bucket_model(steps: list[tuple[int, int]]) -> None:
    """Exact integer model of the kernel bucket, several sources, random gaps (ns)."""
    limiter = RateLimiter()
    cost, cap = 10**9 // PACKETS_PER_SECOND, 10**9 // PACKETS_PER_SECOND * PACKETS_BURSTABLE
    model: dict[int, tuple[int, int]] = {}
    now_ns = 7 * 10**9
    for source, gap in steps:
        now_ns += gap
        # Times on a whole microsecond grid survive the float seconds round trip exactly.
        now_ns -= now_ns % 1000
        if source in model and now_ns - model[source][1] <= 10**9:
            tokens = min(cap, model[source][0] + now_ns - model[source][1])
            expected = tokens >= cost
            model[source] = (tokens - cost if expected else tokens, now_ns)
        else:
            expected = True
            model[source] = (cap - cost, now_ns)
        got = limiter.allow(bytes([10, 0, 0, source]), now_ns / 10**9)
        assert got is expected
