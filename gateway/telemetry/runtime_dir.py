"""The gateway's private runtime directory and hardened opens of the files in it.

What `firezone-gw show` reads (the stats segment) lives in `/run/firezone-gw/` (override:
FIREZONE_GW_RUNTIME_DIR), a directory owned by the gateway's effective uid and writable by
nobody else, so no other local user can plant, replace or forge a file there. systemd's
RuntimeDirectory= creates it ahead of us with mode 0755 or 0700: any existing directory owned
by our uid and not group/world-writable is accepted. Every open uses O_NOFOLLOW (no symlinks)
and O_NONBLOCK (a fifo can never block us), then fstat refuses anything that is not a regular
file owned by the directory's owner. Errors name the path and what was wrong.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

DEFAULT_RUNTIME_DIR = "/run/firezone-gw"
_UNSAFE_MODE = stat.S_IWGRP | stat.S_IWOTH


class UnsafePathError(OSError):
    """A path that someone other than the gateway's user could have planted or changed."""


def runtime_dir() -> Path:
    return Path(os.environ.get("FIREZONE_GW_RUNTIME_DIR", DEFAULT_RUNTIME_DIR))


def _check_dir(fd: int, path: Path, owners: tuple[int, ...]) -> os.stat_result:
    st = os.fstat(fd)
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafePathError(f"{path} is not a directory")
    if st.st_uid not in owners:
        raise UnsafePathError(f"{path} is owned by uid {st.st_uid}, not by uid {owners[0]}")
    if st.st_mode & _UNSAFE_MODE:
        raise UnsafePathError(f"{path} is writable by group or others (mode {st.st_mode:o})")
    return st


def _open_dir(path: Path) -> int:
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)


def make_dir(path: Path | None = None) -> int:
    """Create (mode 0700) or accept the runtime directory for writing; returns an fd of it."""
    path = path or runtime_dir()
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    fd = _open_dir(path)
    try:
        _check_dir(fd, path, (os.geteuid(),))
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_dir(path: Path | None = None) -> tuple[int, int]:
    """Open the runtime directory to read from it: (fd, its owner's uid).

    Root may read the directory of a gateway running as another user; anyone else only
    their own.
    """
    path = path or runtime_dir()
    fd = _open_dir(path)
    try:
        owners = (os.geteuid(),) if os.geteuid() else (os.fstat(fd).st_uid,)
        return fd, _check_dir(fd, path, owners).st_uid
    except BaseException:
        os.close(fd)
        raise


def create_file(dir_fd: int, name: str, size: int) -> int:
    """A new regular file of `size` zero bytes, mode 0600, read-write; returns its fd.

    A file of the same name is a leftover of a dead instance (names carry the creator's
    pid, which is ours now), so it is replaced.
    """
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(name, flags, 0o600, dir_fd=dir_fd)
    except FileExistsError:
        os.unlink(name, dir_fd=dir_fd)
        fd = os.open(name, flags, 0o600, dir_fd=dir_fd)
    try:
        os.ftruncate(fd, size)
    except BaseException:
        os.close(fd)
        os.unlink(name, dir_fd=dir_fd)
        raise
    return fd


def open_file(dir_fd: int, name: str, owner: int) -> tuple[int, int]:
    """Open an existing file read-only without following links or blocking: (fd, size).

    Refuses anything but a regular file owned by `owner` (the directory's owner).
    """
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    fd = os.open(name, flags, dir_fd=dir_fd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafePathError(f"{name} is not a regular file")
        if st.st_uid != owner:
            raise UnsafePathError(f"{name} is owned by uid {st.st_uid}, not by uid {owner}")
        return fd, st.st_size
    except BaseException:
        os.close(fd)
        raise
