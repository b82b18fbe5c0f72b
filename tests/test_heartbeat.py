"""Heartbeats: a child's progress as the supervisor sees it, across a real fork."""

from __future__ import annotations

import os
import select
import signal

import pytest

from gateway.dataplane.heartbeat import Heartbeat, Heartbeats, Stall, ready_fds
from gateway.dataplane.sleeper import Sleeper
from testbed.netns import wait_for


def test_a_sleeping_child_is_seen_asleep_and_its_wake_up_as_progress() -> None:
    beats = Heartbeats(["worker0", "udp"])
    beat = beats["udp"]
    wake_r, wake_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: one Sleeper turn on a plain fd, as the UDP process does
        code = 1
        try:
            sleeper = Sleeper(heartbeat=beat)
            sleeper.watch(wake_r, select.EPOLLIN)
            sleeper.sleep([])
            code = 0
        finally:
            os._exit(code)
    try:
        wait_for(beat.is_asleep, timeout=5)
        before = beat.progress()
        assert beat.watched() == [(wake_r, select.EPOLLIN)]
        assert beats["worker0"].progress() == 0  # slots are separate
        assert not ready_fds([], beat.watched(), {wake_r})  # idle: nothing ready
        os.write(wake_w, b"x")
        assert ready_fds([], beat.watched(), {wake_r})
        assert ready_fds([], beat.watched(), set()) is False  # fds the supervisor lacks: ignored
        _, status = os.waitpid(pid, 0)
        pid = 0
        assert os.waitstatus_to_exitcode(status) == 0
        assert not beat.is_asleep()
        assert beat.progress() > before
    finally:
        if pid:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(wake_r)
        os.close(wake_w)


def test_ring_eventfds_count_as_work_when_readable() -> None:
    efd = os.eventfd(0, os.EFD_NONBLOCK)
    try:
        assert not ready_fds([efd], [], set())
        os.eventfd_write(efd, 1)
        assert ready_fds([efd], [], set())
    finally:
        os.close(efd)


def test_a_slot_records_at_most_three_watched_fds() -> None:
    beat = Heartbeat.detached()
    beat.reset()
    for fd in (5, 6, 7):
        beat.watching(fd, select.EPOLLIN)
    beat.watching(6, 0)  # stops watching: kept, but not reported
    assert beat.watched() == [(5, select.EPOLLIN), (7, select.EPOLLIN)]
    with pytest.raises(ValueError, match="at most 3"):
        beat.watching(8, select.EPOLLIN)


def test_stall_counts_only_time_without_progress_with_work_waiting() -> None:
    stall = Stall()
    assert stall.look(progress=1, work_waiting=True, now=0.0) == 0.0
    # Idle for a long time: never stuck.
    assert stall.look(progress=1, work_waiting=False, now=100.0) == 0.0
    # Work arrives and nothing moves: stuck since the previous look.
    assert stall.look(progress=1, work_waiting=True, now=101.0) == 1.0
    assert stall.look(progress=1, work_waiting=True, now=104.0) == 4.0
    # Progress resets it.
    assert stall.look(progress=12, work_waiting=True, now=105.0) == 0.0
    assert stall.since is None
    assert stall.advanced == 11  # loop turns between the last two looks


def test_heartbeat_costs_no_fd() -> None:
    before = set(os.listdir("/proc/self/fd"))
    beats = Heartbeats([f"worker{i}" for i in range(8)])
    beats["worker7"].beat()
    assert beats["worker7"].progress() == 1
    assert set(os.listdir("/proc/self/fd")) == before


def test_a_detached_heartbeat_records_watched_fds() -> None:
    """A Sleeper without a supervisor's slot (tests, tools) can still watch plain fds."""
    r, w = os.pipe()
    sleeper = Sleeper()
    try:
        sleeper.watch(r, select.EPOLLIN)
        assert sleeper.heartbeat.watched() == [(r, select.EPOLLIN)]
    finally:
        sleeper.close()
        os.close(r)
        os.close(w)
