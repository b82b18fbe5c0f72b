"""Helpers for shm_ring tests: unique ring labels and forked child processes."""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable

_counter = itertools.count()


def unique_ring_name(tag: str = "t") -> str:
    """A ring label unique to this run and call (includes the pid)."""
    return f"fzgw-test-{os.getpid()}-{tag}-{next(_counter)}"


def fork_child(body: Callable[[], None]) -> int:
    """Run body in a forked child that exits 0 on success, 1 on any exception."""
    pid = os.fork()
    if pid == 0:  # child
        code = 0
        try:
            body()
        except BaseException:  # noqa: BLE001 - report every failure as the exit code
            traceback.print_exc()
            code = 1
        finally:
            sys.stderr.flush()
            os._exit(code)
    return pid


def wait_child(pid: int, timeout: float) -> int | None:
    """Exit status of child pid, or None (after killing it) if it ran past timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.02)
    kill_child(pid)
    return None


def kill_child(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, ChildProcessError):
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
