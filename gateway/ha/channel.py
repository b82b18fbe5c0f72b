"""The replication channel between two gateways, sans-I/O: bytes in, bytes and batches out.

Framing: a 4-byte big-endian length, then a NaCl box (`nacl.public.Box` between this node's
secret key and the other's public key, both configured in `[ha]`; never the WireGuard key)
of: a kind byte, the *receiver's* connection id (16 bytes) and a sequence number (8 bytes),
then the body.

Replay: each side opens a connection with a HELLO carrying a fresh random id. Every later
message must carry the id its receiver chose for this connection and a sequence number
greater than the last one accepted, so a message recorded on an earlier connection (another
id), replayed on this one (not greater), or reflected back to its sender (the sender's id is
not the receiver's) is refused. A HELLO itself carries no state: replaying one only starts
a connection the replayer cannot read.

Every refusal is counted in `drops` by reason (forged: the box does not open; replayed;
malformed: opens but is not a message); a length past MAX_FRAME sets `broken` (the framing
is lost: the caller closes the connection).
"""

from __future__ import annotations

import os
import struct
from collections import Counter
from collections.abc import Callable

import nacl.exceptions
import nacl.public

from gateway.ha.codec import MAX_BATCH_BYTES, Batch, MalformedChange, decode_batch, encode_batch

HELLO, DATA = 1, 2
ID_SIZE = 16
_LENGTH = struct.Struct(">I")
_HEAD = struct.Struct(">B16sQ")
MAX_FRAME = MAX_BATCH_BYTES + _HEAD.size + nacl.public.Box.NONCE_SIZE + 16


class Channel:
    """One connection's end (both ends are the same: either may send batches)."""

    def __init__(
        self,
        own_secret: nacl.public.PrivateKey,
        peer_public: nacl.public.PublicKey,
        *,
        random: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self._box = nacl.public.Box(own_secret, peer_public)
        self._random = random
        self.own_id = random(ID_SIZE)
        self.peer_id: bytes | None = None  # known once the other's HELLO came
        self._send_seq = 0
        self._recv_seq = 0
        self._buffer = bytearray()
        self.drops: Counter[str] = Counter()
        self.broken = False

    @property
    def ready(self) -> bool:
        """Batches may be sealed: the other side's HELLO has come."""
        return self.peer_id is not None

    def hello(self) -> bytes:
        """The first frame to send on a new connection."""
        return self._frame(HELLO, self.own_id, 0, b"")

    def seal(self, batch: Batch) -> bytes:
        if self.peer_id is None:
            raise RuntimeError("no HELLO from the other side yet")
        self._send_seq += 1
        return self._frame(DATA, self.peer_id, self._send_seq, encode_batch(batch))

    def _frame(self, kind: int, conn_id: bytes, seq: int, body: bytes) -> bytes:
        sealed = self._box.encrypt(_HEAD.pack(kind, conn_id, seq) + body, self._random(24))
        return _LENGTH.pack(len(sealed)) + bytes(sealed)

    def receive(self, data: bytes) -> list[Batch]:
        """Bytes read from the connection; the batches they complete, in order."""
        self._buffer += data
        batches = []
        while not self.broken and len(self._buffer) >= _LENGTH.size:
            (length,) = _LENGTH.unpack_from(self._buffer)
            if length > MAX_FRAME:
                self.drops["oversize"] += 1
                self.broken = True
                break
            if len(self._buffer) < _LENGTH.size + length:
                break
            frame = bytes(self._buffer[_LENGTH.size : _LENGTH.size + length])
            del self._buffer[: _LENGTH.size + length]
            batch = self.open(frame)
            if batch is not None:
                batches.append(batch)
        return batches

    def open(self, frame: bytes) -> Batch | None:
        """One frame (without its length): its batch, or None (a HELLO, or counted drop)."""
        result = self._open(frame)
        if isinstance(result, str):
            self.drops[result] += 1
            return None
        return result

    def _open(self, frame: bytes) -> Batch | str | None:
        """The batch, None for a HELLO, or the reason the frame is dropped."""
        try:
            plain = self._box.decrypt(frame)
        except (nacl.exceptions.CryptoError, ValueError, TypeError):
            return "forged"
        if len(plain) < _HEAD.size:
            return "malformed"
        kind, conn_id, seq = _HEAD.unpack_from(plain)
        if kind == HELLO:
            self.peer_id, self._send_seq = conn_id, 0
            return None
        if kind != DATA or conn_id != self.own_id or seq <= self._recv_seq:
            return "malformed" if kind != DATA else "replayed"
        try:
            batch = decode_batch(plain[_HEAD.size :])
        except MalformedChange:
            return "malformed"
        self._recv_seq = seq
        return batch
