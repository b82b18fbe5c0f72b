"""Transport sessions in pure Python: keys, send counters and replay windows by our receiver
index, as the Device installs them (the Device's per-packet crypto, behind the `Sessions`
API that the native extension implements too; gateway/dataplane/transport.py).

A send counter is never used twice: `seal` takes it before sealing and refuses once the
counters are spent; `advance_send_counter` only moves it forward. `open` records a counter in
the replay window only after the tag checked.
"""

from __future__ import annotations

import struct
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from gateway.wireguard.constants import (
    KEY_SIZE,
    MAX_TRANSPORT_SIZE,
    REJECT_AFTER_MESSAGES,
    TRANSPORT_HEADER_SIZE,
    TRANSPORT_OVERHEAD,
)
from gateway.wireguard.replay import STORAGE_WORDS, ReplayFilter

OPENED, UNKNOWN, DECRYPT_FAILED, REPLAYED = 0, 1, 2, 3  # what `open` returns
_NONCE = struct.Struct("<4xQ")
_TRANSPORT = struct.Struct("<IIQ")
_WINDOW = struct.Struct(f"={STORAGE_WORDS}Q")

Buffer = bytes | bytearray | memoryview


class Sessions(Protocol):
    """What the Device needs of a transport: sessions by our receiver index."""

    def install(  # noqa: PLR0913 - the session's fields, keyword-only
        self,
        local: int,
        *,
        remote: int,
        send_key: bytes,
        recv_key: bytes,
        created: float,
        peer: int,
        confirmed: bool,
    ) -> None: ...

    def confirm(self, local: int) -> bool: ...

    def remove(self, local: int) -> bool: ...

    def send_counter(self, local: int) -> int | None: ...

    def advance_send_counter(self, local: int, counter: int) -> bool: ...

    def set_send_limit(self, local: int, limit: int) -> bool: ...

    def replay_window(self, local: int) -> bytes | None: ...

    def load_replay_window(self, local: int, window: bytes) -> bool: ...

    def seal(self, local: int, plaintext: Buffer, out: bytearray) -> bool: ...

    def open(self, local: int, message: Buffer, out: bytearray) -> int: ...


class _Session:
    __slots__ = (
        "confirmed",
        "created",
        "peer",
        "recv",
        "remote",
        "replay",
        "rx_bytes",
        "rx_packets",
        "send",
        "send_counter",
        "send_limit",
        "tx_bytes",
        "tx_packets",
    )

    def __init__(  # noqa: PLR0913 - the session's fields, keyword-only
        self, *, remote: int, send: bytes, recv: bytes, created: float, peer: int, confirmed: bool
    ) -> None:
        self.remote = remote
        self.send = ChaCha20Poly1305(send)
        self.recv = ChaCha20Poly1305(recv)
        self.send_counter = 0
        self.send_limit = REJECT_AFTER_MESSAGES
        self.replay = ReplayFilter()
        self.created = created
        self.peer = peer
        self.confirmed = confirmed
        self.rx_packets = self.rx_bytes = self.tx_packets = self.tx_bytes = 0


class PySessions:
    """The sessions of the pure-Python transport (and the Device's default)."""

    def __init__(self) -> None:
        self._sessions: dict[int, _Session] = {}
        self._touched: dict[int, _Session] = {}  # used by batches, in the order first touched

    def install(  # noqa: PLR0913 - the session's fields, keyword-only
        self,
        local: int,
        *,
        remote: int,
        send_key: bytes,
        recv_key: bytes,
        created: float,
        peer: int,
        confirmed: bool,
    ) -> None:
        if len(send_key) != KEY_SIZE or len(recv_key) != KEY_SIZE:
            raise ValueError("session keys must be 32 bytes")
        self._sessions[local] = _Session(
            remote=remote,
            send=send_key,
            recv=recv_key,
            created=created,
            peer=peer,
            confirmed=confirmed,
        )
        self._touched.pop(local, None)

    def confirm(self, local: int) -> bool:
        session = self._sessions.get(local)
        if session is not None:
            session.confirmed = True
        return session is not None

    def remove(self, local: int) -> bool:
        self._touched.pop(local, None)
        return self._sessions.pop(local, None) is not None

    def send_counter(self, local: int) -> int | None:
        session = self._sessions.get(local)
        return None if session is None else session.send_counter

    def advance_send_counter(self, local: int, counter: int) -> bool:
        session = self._sessions.get(local)
        if session is None or counter < session.send_counter:
            return False
        session.send_counter = counter
        return True

    # ---- one packet (the Device's own path) ----------------------------------------------

    def set_send_limit(self, local: int, limit: int) -> bool:
        """Counters from `limit` on wait (the session table persists the next block first)."""
        session = self._sessions.get(local)
        if session is not None:
            session.send_limit = limit
        return session is not None

    def replay_window(self, local: int) -> bytes | None:
        """The replay window as replay.py stores it (STORAGE_WORDS native u64 words)."""
        session = self._sessions.get(local)
        return None if session is None else _WINDOW.pack(*session.replay.window())

    def load_replay_window(self, local: int, window: bytes) -> bool:
        """Continue a window a predecessor kept (`replay_window`'s layout)."""
        session = self._sessions.get(local)
        if session is None or len(window) != _WINDOW.size:
            return False
        session.replay = ReplayFilter(memoryview(bytearray(window)).cast("Q"))
        return True

    def seal(self, local: int, plaintext: bytes | bytearray | memoryview, out: bytearray) -> bool:
        session = self._sessions.get(local)
        if session is None or len(out) != len(plaintext) + TRANSPORT_OVERHEAD:
            return False
        return self._seal(session, plaintext, out)

    @staticmethod
    def _seal(
        session: _Session, plaintext: bytes | bytearray | memoryview, out: bytearray | memoryview
    ) -> bool:
        counter = session.send_counter
        if counter >= session.send_limit or counter >= REJECT_AFTER_MESSAGES:
            return False
        session.send_counter = counter + 1  # before sealing: a counter is never used twice
        _TRANSPORT.pack_into(out, 0, 4, session.remote, counter)
        view = memoryview(out)[TRANSPORT_HEADER_SIZE:]
        session.send.encrypt_into(_NONCE.pack(counter), plaintext, None, view)
        return True

    def open(self, local: int, message: bytes | bytearray | memoryview, out: bytearray) -> int:
        session = self._sessions.get(local)
        if session is None:
            return UNKNOWN
        return self._open(session, message, out)

    @staticmethod
    def _open(session: _Session, message: bytes | bytearray | memoryview, out: bytearray) -> int:
        size = len(message)
        if not TRANSPORT_OVERHEAD <= size <= MAX_TRANSPORT_SIZE or len(out) < size - 32:
            return DECRYPT_FAILED
        (counter,) = _NONCE.unpack_from(message, 4)
        try:
            session.recv.decrypt_into(
                _NONCE.pack(counter), memoryview(message)[TRANSPORT_HEADER_SIZE:], None, out
            )
        except InvalidTag:
            return DECRYPT_FAILED
        return OPENED if session.replay.validate(counter) else REPLAYED
