"""Sleeper's spin before sleeping: only after a wake-up that carried traffic, and bounded."""

from __future__ import annotations

import os
import select
import threading
from collections.abc import Iterator

import pytest

from gateway.dataplane.sleeper import Sleeper
from shm_ring import Ring
from tests.ring_helpers import unique_ring_name

# Long enough that the publishing thread always lands inside the spin, however busy the machine:
# the tests check what happened (sleeps, wake-ups), never how fast.
LONG_SPIN = 5.0
PUBLISH_AFTER = 0.05


@pytest.fixture
def ring() -> Iterator[Ring]:
    with Ring.create(unique_ring_name("sleeper"), slots=4, slot_size=8) as r:
        yield r


def _woken_by_a_plain_fd(sleeper: Sleeper) -> None:
    """One sleep that ends with an fd event: traffic flowed just now."""
    r, w = os.pipe()
    try:
        sleeper.watch(r, select.EPOLLIN)
        os.write(w, b"x")
        assert sleeper.sleep([]) == [(r, select.EPOLLIN)]
        sleeper.unwatch(r)
    finally:
        os.close(r)
        os.close(w)


def _sleep_while_published_later(sleeper: Sleeper, ring: Ring) -> list[tuple[int, int]]:
    publisher = threading.Timer(PUBLISH_AFTER, ring.send, [b"late"])
    publisher.start()
    try:
        return sleeper.sleep([ring], timeout=LONG_SPIN + 5)
    finally:
        publisher.join()


def test_after_traffic_the_sleeper_spins_and_catches_data_without_a_wakeup(ring: Ring) -> None:
    sleeper = Sleeper(consumers=[ring], spin=LONG_SPIN, spin_window=LONG_SPIN)
    try:
        _woken_by_a_plain_fd(sleeper)
        assert _sleep_while_published_later(sleeper, ring) == []
        assert ring.recv_ready()
        stats = ring.stats()
        assert (stats.consumer_sleeps, stats.consumer_wakeups) == (0, 0)  # never armed
    finally:
        sleeper.close()


def test_an_idle_sleeper_sleeps_at_once_and_is_woken(ring: Ring) -> None:
    sleeper = Sleeper(consumers=[ring], spin=LONG_SPIN, spin_window=LONG_SPIN)
    try:
        events = _sleep_while_published_later(sleeper, ring)  # no traffic before: no spin
        assert events == [(ring.consumer_fd(), select.EPOLLIN)]
        stats = ring.stats()
        assert (stats.consumer_sleeps, stats.consumer_wakeups) == (1, 1)
    finally:
        sleeper.close()


def test_the_spin_is_bounded_then_it_arms_and_sleeps(ring: Ring) -> None:
    sleeper = Sleeper(consumers=[ring], spin=0.001, spin_window=LONG_SPIN)
    try:
        _woken_by_a_plain_fd(sleeper)
        assert sleeper.sleep([ring], timeout=0.01) == []  # spun 1 ms, then slept to the timeout
        assert ring.stats().consumer_sleeps == 1
        # That sleep ended with a timeout, not traffic: the next one does not spin.
        events = _sleep_while_published_later(sleeper, ring)
        assert events == [(ring.consumer_fd(), select.EPOLLIN)]
        assert ring.stats().consumer_sleeps == 2
    finally:
        sleeper.close()
