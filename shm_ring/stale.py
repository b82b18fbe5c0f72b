"""Removal of ring segments left behind by a crashed gateway instance.

A segment is stale when the process recorded in its header as creator (pid and start time, so
a reused pid does not count) no longer runs. Segments of a live instance, and files that are
not shm_ring segments, are never touched.
"""

from __future__ import annotations

import contextlib
import mmap
import os

from shm_ring.ring import _HEADER_BYTES, _W_MAGIC, _W_OWNER_PID, _W_OWNER_START, MAGIC, SHM_DIR
from shm_ring.ring import owner_alive as _owner_alive


def _creator(path: str) -> tuple[int, int] | None:
    """(pid, start time) recorded in an shm_ring segment, or None if it is not one."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        if os.fstat(fd).st_size < _HEADER_BYTES:
            return None
        with (
            mmap.mmap(fd, _HEADER_BYTES, prot=mmap.PROT_READ) as hm,
            memoryview(hm) as hv,
            hv.cast("Q") as words,
        ):
            if words[_W_MAGIC] != MAGIC:
                return None
            return words[_W_OWNER_PID], words[_W_OWNER_START]
    finally:
        os.close(fd)


def remove_if_stale(name: str) -> bool:
    """Unlink segment `name` if its creator is dead; True if it is gone now."""
    path = os.path.join(SHM_DIR, name)
    if not os.path.exists(path):
        return True
    creator = _creator(path)
    if creator is None or _owner_alive(*creator):
        return False
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    return True


def cleanup_stale(prefix: str) -> list[str]:
    """Unlink this instance's stale segments (names starting with prefix); return their names.

    Call at start with the instance's own prefix (e.g. "fzgw-<instance>-"): another instance
    uses another prefix, and its live segments would be kept anyway.
    """
    if not prefix or "/" in prefix:
        raise ValueError(f"stale-segment prefix must be non-empty without '/', got {prefix!r}")
    removed = []
    for entry in sorted(os.listdir(SHM_DIR)):
        path = os.path.join(SHM_DIR, entry)
        if entry.startswith(prefix) and _creator(path) is not None and remove_if_stale(entry):
            removed.append(entry)
    return removed
