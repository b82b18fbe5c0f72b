"""The device's run-time configuration, kept where a restarted crypto process finds it.

Peers, keys and allowed IPs set through `wg` live in the crypto process. After every change
it writes the whole state (a `set` body, see gateway.uapi.format_set) into a memfd that the
supervisor created before forking; a restarted crypto process applies it on top of the config
file, so `wg`-configured peers survive a crash. The memfd has no path (the keys in it are
never on a file system) and disappears with the gateway.

Layout: a 12-byte header (length, crc32) written after the data, so a crash mid-write leaves
a header that does not match and the state is ignored rather than half applied.
"""

from __future__ import annotations

import os
import struct
import zlib

_HEADER = struct.Struct("<QI")
MAX_STATE_BYTES = 64 * 1024 * 1024  # far above 100k allowed IPs; a bound, not a target


class RunState:
    def __init__(self) -> None:
        self.fd = os.memfd_create("firezone-gw-state", os.MFD_CLOEXEC)

    def save(self, text: str) -> None:
        data = text.encode()
        if len(data) > MAX_STATE_BYTES:
            raise ValueError(f"run-time state of {len(data)} bytes exceeds {MAX_STATE_BYTES}")
        os.pwrite(self.fd, _HEADER.pack(0, 0), 0)  # invalid while the data changes
        os.ftruncate(self.fd, _HEADER.size + len(data))
        os.pwrite(self.fd, data, _HEADER.size)
        os.pwrite(self.fd, _HEADER.pack(len(data), zlib.crc32(data)), 0)

    def load(self) -> str | None:
        """The last state saved completely, or None."""
        header = os.pread(self.fd, _HEADER.size, 0)
        if len(header) < _HEADER.size:
            return None
        length, crc = _HEADER.unpack(header)
        if not length or length > MAX_STATE_BYTES:
            return None
        data = os.pread(self.fd, length, _HEADER.size)
        if len(data) != length or zlib.crc32(data) != crc:
            return None
        return data.decode()

    def close(self) -> None:
        os.close(self.fd)
