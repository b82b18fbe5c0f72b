"""Where the `wg` control socket lives when /run/wireguard must stay root's.

`wg` finds a userspace interface at `/var/run/wireguard/<ifname>.sock` only. A gateway that
may create files there could plant sockets for other interfaces' names and capture root's
`wg set` for them (private keys included). So under systemd the gateway binds its socket in
a directory of its own (FIREZONE_GW_CONTROL_SOCKET_DIR, the unit's RuntimeDirectory), and
root, before the gateway starts, makes the one name `wg` looks for a symlink to it: `wg`
(stat and connect follow symlinks) reaches the gateway, and the gateway can write nothing
in /run/wireguard. Without the variable the gateway binds in /var/run/wireguard itself, as
wireguard-go does.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from gateway.uapi.server import CONTROL_DIR_ENV, SOCKET_DIR, remove_if_stale


class LinkError(OSError):
    """The control socket's name in /run/wireguard is taken by something else."""


def socket_name(ifname: str) -> str:
    return f"{ifname}.sock"


def link_control_socket(ifname: str, target_dir: Path, wg_dir: Path = SOCKET_DIR) -> Path:
    """As root: make `wg_dir/<ifname>.sock` a symlink to `target_dir/<ifname>.sock` (made if
    missing, root's, mode 0755). A link of ours or a stale socket is replaced; a live socket
    or any other file raises LinkError. Returns the link's path."""
    if target_dir.resolve() == wg_dir.resolve():
        raise LinkError(f"{CONTROL_DIR_ENV} is {wg_dir} itself: nothing to link")
    if not wg_dir.is_dir():
        wg_dir.mkdir(parents=True, exist_ok=True)
        wg_dir.chmod(0o755)  # whatever the umask (the unit's is 0077): `wg` is for everyone
    link = wg_dir / socket_name(ifname)
    target = target_dir / socket_name(ifname)
    if link.is_symlink():
        if Path(os.readlink(link)).parent != target_dir:
            raise LinkError(f"{link} is a link to {os.readlink(link)}, not ours: not replaced")
        link.unlink()
    elif link.exists():
        if stat.S_ISSOCK(link.lstat().st_mode):
            remove_if_stale(link)
        if link.exists():
            raise LinkError(f"{link} exists and is in use: another program serves {ifname}")
    link.symlink_to(target)
    return link


def unlink_control_sockets(target_dir: Path, wg_dir: Path = SOCKET_DIR) -> list[Path]:
    """As root: remove the links in `wg_dir` that point into `target_dir` (what
    link_control_socket made, whatever the interface was called); returns them."""
    removed: list[Path] = []
    try:
        entries = list(wg_dir.iterdir())
    except FileNotFoundError:
        return removed
    for entry in entries:
        if entry.is_symlink() and Path(os.readlink(entry)).parent == target_dir:
            entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed
