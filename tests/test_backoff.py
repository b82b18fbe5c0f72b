"""The restart policy with a fake clock: exponential delays, reset, giving up."""

from __future__ import annotations

from gateway.dataplane.backoff import RestartBackoff


def crash_loop(backoff: RestartBackoff, start: float, crashes: int) -> tuple[list[float], float]:
    """A child that dies at once every time: the delays it gets, and the clock after."""
    now, delays = start, []
    for _ in range(crashes):
        delay = backoff.next_delay(ran=0.0, now=now)
        assert delay is not None
        delays.append(delay)
        now += delay
    return delays, now


def test_a_child_dying_at_start_up_waits_twice_as_long_each_time_up_to_ten_seconds() -> None:
    delays, _ = crash_loop(RestartBackoff(), 0.0, 10)
    assert delays == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 10.0, 10.0, 10.0]


def test_a_healthy_run_starts_the_delays_over() -> None:
    backoff = RestartBackoff()
    _, now = crash_loop(backoff, 0.0, 5)
    assert backoff.next_delay(ran=9.0, now=now + 9.0) == 3.2  # not long enough: still a streak
    assert backoff.next_delay(ran=10.0, now=now + 30.0) == 0.1
    assert backoff.next_delay(ran=0.0, now=now + 30.1) == 0.2


def test_it_gives_up_after_a_minute_of_failing_without_a_healthy_run() -> None:
    backoff = RestartBackoff()
    now = 1000.0
    delays = []
    while (delay := backoff.next_delay(ran=0.0, now=now)) is not None:
        delays.append(delay)
        now += delay
    assert now - 1000.0 >= 60.0
    assert now - 1000.0 < 60.0 + 10.0  # gave up at the first failure after the minute
    assert backoff.failing_for(now) == now - 1000.0
    assert len(delays) < 20  # a crash loop does not flood the journal


def test_one_crash_a_day_never_gives_up() -> None:
    backoff = RestartBackoff()
    for day in range(1, 100):
        assert backoff.next_delay(ran=86_400.0, now=day * 86_400.0) == 0.1
