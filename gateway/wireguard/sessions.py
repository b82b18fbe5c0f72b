"""Transport sessions kept where a successor process finds them, and never a nonce twice.

`SessionTable` keeps one fixed-size record per keypair in a writable buffer: the crypto
process's mapping of a memfd only it maps (gateway/dataplane/runstate.py), a bytearray in
tests. A record holds what continues the session (`SessionRecord`: peer, indices, both
keys, initiator flag, previous/current/next position, creation time) plus two things that
change while it runs:

- the end of the reserved block of send counters (`send_limit`). The Device sends counter c
  only while c < send_limit, and moves the limit COUNTER_BLOCK further (written here)
  before it uses any counter past it. Buffer writes reach the memfd at once (no write-back
  of a process that dies), so a successor that starts at the saved limit never uses a
  (key, counter) pair twice, whatever instant the predecessor died at; at most one block
  of counters is skipped, which the peer's replay window takes (counters only go up).
- the replay window (ReplayFilter storage), written through by every accepted packet.

Writes are ordered so a record is either free, or complete: `state` is set last when a
record is made and cleared first when it is freed. Sans-I/O: no clock, no syscalls.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass

from gateway.wireguard.constants import KEY_SIZE, REJECT_AFTER_MESSAGES
from gateway.wireguard.keypair import Keypair, Keypairs
from gateway.wireguard.noise import SessionKeys
from gateway.wireguard.replay import STORAGE_WORDS
from gateway.wireguard.session_crypto import Sessions

log = logging.getLogger(__name__)

COUNTER_BLOCK = 4096  # counters reserved at a time (a write per 4096 packets sent)
POSITIONS = ("previous", "current", "next")
_FREE, _KEPT = 0, 1
# state, local index, remote index, initiator, position, peer, send key, recv key,
# created (monotonic seconds), send_limit.
_HEAD = struct.Struct("<IIIBBxx32s32s32sdQ")
_STATE = struct.Struct("<I")
_LIMIT = struct.Struct("<Q")
_LIMIT_OFFSET = _HEAD.size - _LIMIT.size  # a whole word (fingerprints reads it as one)
_POSITION_OFFSET = 13
RECORD_SIZE = _HEAD.size + STORAGE_WORDS * 8
# The table's header: how many slots from the first were ever used (a successor scans only
# those: a gateway with a few peers restarts without reading the whole table).
HEADER_SIZE = 64
_USED = struct.Struct("<Q")


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """One kept session, as a successor reads it (no replay window: that stays in place)."""

    peer: bytes
    local_index: int
    remote_index: int
    send_key: bytes
    recv_key: bytes
    is_initiator: bool
    position: int  # index into POSITIONS
    created: float
    send_limit: int

    def __repr__(self) -> str:  # never the keys
        return f"SessionRecord(local={self.local_index}, position={POSITIONS[self.position]})"


class SessionTable:
    """The Device's session sink (see module docstring) over `buffer`."""

    def __init__(self, buffer: memoryview) -> None:
        if buffer.readonly or buffer.format != "B":
            raise ValueError("the session table needs a writable byte buffer")
        self._header = buffer[:HEADER_SIZE]
        self._buf = buffer[HEADER_SIZE:]
        self.capacity = len(self._buf) // RECORD_SIZE
        self._words = self._buf[: self.capacity * RECORD_SIZE].cast("Q")
        self._used = min(self.capacity, _USED.unpack_from(self._header)[0])
        kept = set(self._kept_slots())
        self._free = [slot for slot in reversed(range(self.capacity)) if slot not in kept]
        self._full_logged = False

    def _state(self, slot: int) -> int:
        state: int = _STATE.unpack_from(self._buf, slot * RECORD_SIZE)[0]
        return state

    def _kept_slots(self) -> list[int]:
        """The slots whose record is kept: the state is the low half of a record's first
        word (one read per record: a successor scans the whole table at start)."""
        first_words = self._words[: self._used * RECORD_SIZE // 8 : RECORD_SIZE // 8]
        return [slot for slot, word in enumerate(first_words) if word & 0xFFFFFFFF == _KEPT]

    # ---- a successor's view --------------------------------------------------------------

    def records(self) -> list[tuple[int, SessionRecord]]:
        """Every kept record with its slot."""
        found = []
        for slot in self._kept_slots():
            record = self.record(slot)
            if record is not None:
                found.append((slot, record))
        return found

    def fingerprints(self) -> list[tuple[int, int, int]]:
        """Per slot ever used, three words that change whenever its record does: state and
        local index, remote index and position, send limit (gateway/ha compares them to
        find the records that changed without reading every record: one strided read of
        the table each)."""
        stride, end = RECORD_SIZE // 8, self._used * RECORD_SIZE // 8
        words = self._words
        return list(
            zip(
                words[0:end:stride].tolist(),
                words[1:end:stride].tolist(),
                words[_LIMIT_OFFSET // 8 : end : stride].tolist(),
                strict=True,
            )
        )

    @staticmethod
    def holds_session(fingerprint: tuple[int, int, int]) -> bool:
        """Whether the slot of this fingerprint holds a session."""
        return fingerprint[0] & 0xFFFFFFFF == _KEPT

    def record(self, slot: int) -> SessionRecord | None:
        """The record in `slot`, or None when it is free."""
        if self._state(slot) != _KEPT:
            return None
        _, local, remote, initiator, position, peer, send, recv, created, limit = _HEAD.unpack_from(
            self._buf, slot * RECORD_SIZE
        )
        return SessionRecord(
            peer, local, remote, send, recv, bool(initiator), position, created, limit
        )

    def adopt(self, slot: int, record: SessionRecord, transport: Sessions, peer_id: int) -> Keypair:
        """The keypair of a kept record, continuing it in `transport`: its replay window
        from the record, its counters from the saved limit on (the next send reserves a
        block first)."""
        keys = SessionKeys(
            record.send_key,
            record.recv_key,
            record.is_initiator,
            record.local_index,
            record.remote_index,
        )
        kp = Keypair(keys, record.created, transport, peer_id)
        kp.record = slot
        kp.send_counter = kp.send_limit = record.send_limit
        words = self._replay_words(slot)
        transport.load_replay_window(kp.local_index, words.tobytes())
        kp.replay = words
        return kp

    def insert(self, record: SessionRecord) -> int | None:
        """Write a session another node kept (gateway/ha: a takeover), to `adopt` next; its
        slot, or None when the table is full."""
        if not self._free:
            return None
        slot = self._free.pop()
        self._write(slot, record)
        return slot

    def _write(self, slot: int, record: SessionRecord) -> None:
        """Make `slot` hold `record` with an empty replay window; the state word last."""
        if slot >= self._used:  # raised before the record exists: a successor scans it
            self._used = slot + 1
            _USED.pack_into(self._header, 0, self._used)
        base = slot * RECORD_SIZE
        words = self._replay_words(slot)
        for i in range(STORAGE_WORDS):
            words[i] = 0
        _HEAD.pack_into(
            self._buf,
            base,
            _FREE,
            record.local_index,
            record.remote_index,
            record.is_initiator,
            record.position,
            record.peer,
            record.send_key,
            record.recv_key,
            record.created,
            record.send_limit,
        )
        _STATE.pack_into(self._buf, base, _KEPT)  # complete: now a successor may use it

    def discard(self, slot: int) -> None:
        """Free a record a successor could not use."""
        self._release(slot)

    # ---- the sink the Device calls -------------------------------------------------------

    def keep(self, peer: bytes, kp: Keypair) -> None:
        """A new keypair: give it a record, its first block of counters and a replay window
        in the record. When the table is full it is not kept (and never restored, so it may
        use its counters freely)."""
        if not self._free:
            if not self._full_logged:
                log.warning("session table full (%d): new sessions are not kept", self.capacity)
                self._full_logged = True
            return
        if len(peer) != KEY_SIZE:
            raise ValueError("a peer's public key is 32 bytes")
        slot = self._free.pop()  # the lowest free one: the used part stays small
        limit = min(REJECT_AFTER_MESSAGES, kp.send_counter + COUNTER_BLOCK)
        record = SessionRecord(
            peer,
            kp.local_index,
            kp.remote_index,
            kp.send_key,
            kp.recv_key,
            kp.is_initiator,
            POSITIONS.index("next"),
            kp.created,
            limit,
        )
        self._write(slot, record)
        kp.record = slot
        kp.send_limit = limit
        kp.replay = self._replay_words(slot)  # zeroed by _write, as the transport's new window

    def reserve(self, kp: Keypair) -> None:
        """The next block of send counters for `kp`, persisted before the Device uses it."""
        if kp.record < 0:
            kp.send_limit = REJECT_AFTER_MESSAGES  # not kept: nobody continues it
            return
        limit = min(REJECT_AFTER_MESSAGES, kp.send_counter + COUNTER_BLOCK)
        _LIMIT.pack_into(self._buf, kp.record * RECORD_SIZE + _LIMIT_OFFSET, limit)
        kp.send_limit = limit

    def arrange(self, keypairs: Keypairs) -> None:
        """Record where each of a peer's keypairs sits (after a handshake or confirmation)."""
        for position, kp in enumerate((keypairs.previous, keypairs.current, keypairs.next)):
            if kp is not None and kp.record >= 0:
                self._buf[kp.record * RECORD_SIZE + _POSITION_OFFSET] = position

    def forget(self, kp: Keypair) -> None:
        """A keypair the Device dropped: its record is freed."""
        if kp.record >= 0:
            self._release(kp.record)
            kp.record = -1

    def _release(self, slot: int) -> None:
        if self._state(slot) == _KEPT:
            _STATE.pack_into(self._buf, slot * RECORD_SIZE, _FREE)
            # The keys go too: a freed record holds no secret.
            self._buf[slot * RECORD_SIZE : (slot + 1) * RECORD_SIZE] = bytes(RECORD_SIZE)
            self._free.append(slot)

    def _replay_words(self, slot: int) -> memoryview:
        start = (slot * RECORD_SIZE + _HEAD.size) // 8
        return self._words[start : start + STORAGE_WORDS]
