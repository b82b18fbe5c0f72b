"""Interface name rules shared by the TUN and netlink code."""

from __future__ import annotations

from tunio.errors import TunError

IFNAMSIZ = 16  # including the trailing NUL


def validate_ifname(name: str) -> bytes:
    """The name as bytes for TUNSETIFF, or a TunError saying what is wrong with it."""
    raw = name.encode()
    if not raw or len(raw) >= IFNAMSIZ or any(c in raw for c in b"/\0 \t\n:"):
        raise TunError(f"invalid interface name {name!r}: 1-15 bytes, no '/', ':', NUL or spaces")
    return raw
