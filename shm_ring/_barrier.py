"""Asymmetric full memory barrier for the sleep/wake handshake, built on membarrier(2).

The side about to sleep (rare) calls `heavy_barrier()`; the side that publishes (every batch)
needs only program order, which the interpreter gives for free. membarrier with
MEMBARRIER_CMD_GLOBAL_EXPEDITED makes every running thread of every registered process execute
a full barrier (an IPI, or a context switch for threads not running) before it returns, which
upgrades the publisher's plain "store index; load flag" to "store; full fence; load". See the
handshake proof in `shm_ring.ring`.
"""

from __future__ import annotations

import ctypes
import os
import platform

_NR_MEMBARRIER = {"x86_64": 324, "aarch64": 283}
_CMD_QUERY = 0
_CMD_GLOBAL = 1 << 0
_CMD_GLOBAL_EXPEDITED = 1 << 1
_CMD_REGISTER_GLOBAL_EXPEDITED = 1 << 2

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


class _State:
    """Which membarrier command this process uses; chosen once, lazily."""

    command: int = _CMD_GLOBAL
    registered_pid: int = 0


def _membarrier(cmd: int) -> int:
    nr = _NR_MEMBARRIER.get(platform.machine())
    if nr is None:
        raise RuntimeError(f"membarrier syscall number unknown for {platform.machine()!r}")
    return int(_syscall(ctypes.c_long(nr), ctypes.c_int(cmd), ctypes.c_uint(0), ctypes.c_int(0)))


def register() -> None:
    """Register this process as a target of expedited barriers (idempotent per process).

    Every process that touches a ring must be registered, or its plain loads/stores would not be
    fenced by the peer's heavy barrier; `Ring` calls this on create/attach and after every fork.
    """
    pid = os.getpid()
    if _State.registered_pid == pid:
        return
    supported = _membarrier(_CMD_QUERY)
    if supported < 0:
        err = ctypes.get_errno()
        raise RuntimeError(f"membarrier(2) unavailable ({os.strerror(err)}): shm_ring needs it")
    if supported & _CMD_GLOBAL_EXPEDITED and _membarrier(_CMD_REGISTER_GLOBAL_EXPEDITED) == 0:
        _State.command = _CMD_GLOBAL_EXPEDITED
    elif supported & _CMD_GLOBAL:
        # Always correct, but costs an RCU grace period (~10 ms) per sleep.
        _State.command = _CMD_GLOBAL
    else:
        raise RuntimeError("membarrier(2) offers no global barrier: shm_ring needs one")
    _State.registered_pid = pid


def heavy_barrier() -> None:
    """Full barrier on this CPU and on every CPU running a registered process."""
    if _State.registered_pid != os.getpid():
        register()
    if _membarrier(_State.command) != 0:
        err = ctypes.get_errno()
        raise RuntimeError(f"membarrier(2) failed: {os.strerror(err)}")


def _after_fork_in_child() -> None:
    if _State.registered_pid:
        _State.registered_pid = 0
        register()


os.register_at_fork(after_in_child=_after_fork_in_child)
