"""The device's run-time state, kept where a restarted crypto process finds it.

Three memfds that the supervisor creates before forking and that only the crypto process
reads or writes; they have no path (the keys in them are never on a file system) and
disappear with the gateway.

- The configuration: peers, keys and allowed IPs set through `wg` live in the crypto
  process. After every change it writes the whole state (a `set` body, see
  gateway.uapi.format_set); a restarted crypto process applies it on top of the config file,
  so `wg`-configured peers survive a crash. Layout: a 16-byte header (length, crc32, entry
  being restored) then the text. Length and crc are written after the text, so a crash
  mid-write leaves a header that does not match and the state is ignored rather than half
  applied. The third word is set while a restore applies an entry: if the process dies
  there, its successor finds the entry that killed it (gateway/dataplane/restore.py).
- The handshake timestamps: the greatest TAI64N timestamp accepted from each peer (the
  replay protection of initiations). Without them a restarted crypto process would accept an
  initiation captured earlier and move the peer's endpoint to whoever replayed it. Layout:
  fixed 44-byte records (public key, timestamp), each written by one pwrite, so a crash never
  leaves half a record.
- The sessions: keys, indices, replay windows and reserved send counters of every
  transport session (gateway/wireguard/sessions.py), so a restarted crypto process
  continues them without a handshake. Only the crypto process maps it (`session_table`,
  after fork: a mapping made before would be inherited by every child); records are
  written in place, so nothing is lost when the process dies, and a record is zeroed when
  its session ends.
"""

from __future__ import annotations

import logging
import mmap
import os
import struct
import zlib
from collections.abc import Mapping

from gateway.wireguard.sessions import HEADER_SIZE, RECORD_SIZE, SessionTable

log = logging.getLogger(__name__)

_HEADER = struct.Struct("<QII")
_RESTORING_OFFSET = 12  # the third header word
_RESTORING = struct.Struct("<I")
MAX_STATE_BYTES = 64 * 1024 * 1024  # far above 100k allowed IPs; a bound, not a target

KEY_SIZE = 32
TIMESTAMP_SIZE = 12
_RECORD = KEY_SIZE + TIMESTAMP_SIZE
MAX_TIMESTAMPS = 1 << 16  # peers remembered (2.9 MB); more peers than that get none kept
# Sessions kept (three keypairs a peer at most): 57 MB of address space, memory only for
# records in use. Sessions past it are not kept (their peers handshake again).
MAX_SESSIONS = 3 << 14
SESSIONS_BYTES = HEADER_SIZE + MAX_SESSIONS * RECORD_SIZE  # another size: another layout
# Each memfd's name in a hand-over to the next supervisor (dataplane/handover.py), and the
# name it was made with (what /proc shows, checked when it is taken back).
STATE, TIMESTAMPS, SESSIONS = "state", "timestamps", "sessions"
MEMFD_NAMES = {
    STATE: "firezone-gw-state",
    TIMESTAMPS: "firezone-gw-timestamps",
    SESSIONS: "firezone-gw-sessions",
}


class RunState:
    def __init__(self, kept: Mapping[str, int] | None = None) -> None:
        """New memfds, or those in `kept` (name -> fd, already checked: a previous
        supervisor's, handed over)."""
        kept = kept or {}
        self.fd = kept.get(STATE) or _memfd(STATE)
        self.timestamps = HandshakeTimestamps(kept.get(TIMESTAMPS))
        sessions = kept.get(SESSIONS)
        if sessions is None:
            sessions = _memfd(SESSIONS)
            os.ftruncate(sessions, SESSIONS_BYTES)
        self.sessions_fd = sessions

    def named_fds(self) -> dict[str, int]:
        """The memfds under their hand-over names."""
        return {STATE: self.fd, TIMESTAMPS: self.timestamps.fd, SESSIONS: self.sessions_fd}

    def session_table(self) -> SessionTable:
        """The sessions, mapped into this process (call it in the crypto process only)."""
        size = os.fstat(self.sessions_fd).st_size
        mapping = mmap.mmap(self.sessions_fd, size, mmap.MAP_SHARED)
        return SessionTable(memoryview(mapping))

    def save(self, text: str) -> None:
        """Replace the saved state (this also ends a restore: the entry mark is cleared)."""
        data = text.encode()
        if len(data) > MAX_STATE_BYTES:
            raise ValueError(f"run-time state of {len(data)} bytes exceeds {MAX_STATE_BYTES}")
        os.pwrite(self.fd, _HEADER.pack(0, 0, 0), 0)  # invalid while the data changes
        os.ftruncate(self.fd, _HEADER.size + len(data))
        os.pwrite(self.fd, data, _HEADER.size)
        os.pwrite(self.fd, _HEADER.pack(len(data), zlib.crc32(data), 0), 0)

    def load(self) -> str | None:
        """The last state saved completely, or None."""
        header = os.pread(self.fd, _HEADER.size, 0)
        if len(header) < _HEADER.size:
            return None
        length, crc, _ = _HEADER.unpack(header)
        if not length or length > MAX_STATE_BYTES:
            return None
        data = os.pread(self.fd, length, _HEADER.size)
        if len(data) != length or zlib.crc32(data) != crc:
            return None
        return data.decode(errors="replace")  # a bad byte fails its line, not the whole state

    def mark_restoring(self, entry: int) -> None:
        """Record that entry number `entry` (1-based; 0: none) is being applied now."""
        if os.fstat(self.fd).st_size >= _HEADER.size:
            os.pwrite(self.fd, _RESTORING.pack(entry), _RESTORING_OFFSET)

    def restoring(self) -> int:
        """The entry a restore was applying when its process died (1-based), or 0."""
        word = os.pread(self.fd, _RESTORING.size, _RESTORING_OFFSET)
        return _RESTORING.unpack(word)[0] if len(word) == _RESTORING.size else 0

    def fds(self) -> list[int]:
        """Every fd the state lives in: what a process that uses it must keep open."""
        return [self.fd, self.timestamps.fd, self.sessions_fd]

    def close(self) -> None:
        os.close(self.fd)
        os.close(self.sessions_fd)
        self.timestamps.close()


class HandshakeTimestamps:
    """Per peer public key, the greatest handshake timestamp accepted (see module docstring).

    Each process that opens the table reads it once and then keeps its own index of the
    records; records are never removed (a peer removed and added again keeps its replay
    protection), and when MAX_TIMESTAMPS peers have one, new peers' are not kept.
    """

    def __init__(self, fd: int | None = None) -> None:
        self.fd = _memfd(TIMESTAMPS) if fd is None else fd
        self._slots: dict[bytes, int] | None = None
        self._full_logged = False

    def load(self) -> dict[bytes, bytes]:
        """Every peer's greatest saved timestamp."""
        found, self._slots = self._read()
        return found

    def _read(self) -> tuple[dict[bytes, bytes], dict[bytes, int]]:
        size = os.fstat(self.fd).st_size
        data = os.pread(self.fd, min(size, MAX_TIMESTAMPS * _RECORD), 0)
        found: dict[bytes, bytes] = {}
        slots: dict[bytes, int] = {}
        for slot in range(len(data) // _RECORD):
            record = data[slot * _RECORD : (slot + 1) * _RECORD]
            key, timestamp = record[:KEY_SIZE], record[KEY_SIZE:]
            found[key] = max(found.get(key, timestamp), timestamp)
            slots[key] = slot
        return found, slots

    def save(self, public_key: bytes, timestamp: bytes) -> None:
        if len(public_key) != KEY_SIZE or len(timestamp) != TIMESTAMP_SIZE:
            raise ValueError("a timestamp record is a 32-byte key and a 12-byte TAI64N value")
        slots = self._slots
        if slots is None:
            slots = self._slots = self._read()[1]
        slot = slots.get(public_key)
        if slot is None:
            if len(slots) >= MAX_TIMESTAMPS:
                if not self._full_logged:
                    log.error("handshake timestamps of more than %d peers are not kept", len(slots))
                    self._full_logged = True
                return
            slot = slots[public_key] = len(slots)
        os.pwrite(self.fd, public_key + timestamp, slot * _RECORD)

    def close(self) -> None:
        os.close(self.fd)


def _memfd(name: str) -> int:
    return os.memfd_create(MEMFD_NAMES[name], os.MFD_CLOEXEC)
