"""Transport keypairs and their rotation (previous / current / next), as wireguard-go keypair.go."""

from __future__ import annotations

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from gateway.wireguard.constants import REJECT_AFTER_MESSAGES, REJECT_AFTER_TIME
from gateway.wireguard.noise import SessionKeys
from gateway.wireguard.replay import ReplayFilter


class Keypair:
    """One direction pair of transport keys; the AEAD objects are reused for every packet.

    `send_limit`: counters below it may be sent. Without a session table it is the protocol's
    limit; with one (gateway/wireguard/sessions.py) it is the end of the block of counters
    reserved, and persisted, for this keypair: a counter at the limit waits until the next
    block's end is persisted, so a successor that restores the session starts past every
    counter this process may have used. `record` is the keypair's place in that table (-1:
    none). `created` is monotonic time, the same in every process of one boot.
    """

    __slots__ = (
        "created",
        "is_initiator",
        "local_index",
        "record",
        "recv",
        "recv_key",
        "remote_index",
        "replay",
        "send",
        "send_counter",
        "send_key",
        "send_limit",
    )

    def __init__(self, keys: SessionKeys, created: float) -> None:
        self.send_key = keys.send_key
        self.recv_key = keys.recv_key
        self.send = ChaCha20Poly1305(keys.send_key)
        self.recv = ChaCha20Poly1305(keys.recv_key)
        self.send_counter = 0
        self.send_limit = REJECT_AFTER_MESSAGES
        self.record = -1
        self.replay = ReplayFilter()
        self.created = created
        self.is_initiator = keys.is_initiator
        self.local_index = keys.local_index
        self.remote_index = keys.remote_index

    def __repr__(self) -> str:  # never the keys
        return f"Keypair(local={self.local_index}, remote={self.remote_index})"

    def usable_for_sending(self, now: float) -> bool:
        return now - self.created < REJECT_AFTER_TIME and self.send_counter < REJECT_AFTER_MESSAGES


class Keypairs:
    """previous / current / next; `next` is a responder's keypair awaiting confirmation."""

    __slots__ = ("current", "next", "previous")

    def __init__(self) -> None:
        self.previous: Keypair | None = None
        self.current: Keypair | None = None
        self.next: Keypair | None = None

    def all(self) -> list[Keypair]:
        return [kp for kp in (self.previous, self.current, self.next) if kp is not None]

    def install(self, keypair: Keypair) -> list[Keypair]:
        """Add a fresh keypair; returns the keypairs that are dropped (to free their indices)."""
        dropped: list[Keypair] = []
        if keypair.is_initiator:
            if self.next is not None:
                dropped += [kp for kp in (self.previous, self.current) if kp is not None]
                self.previous, self.next = self.next, None
            else:
                if self.previous is not None:
                    dropped.append(self.previous)
                self.previous = self.current
            self.current = keypair
        else:
            dropped += [kp for kp in (self.next, self.previous) if kp is not None]
            self.next, self.previous = keypair, None
        return dropped

    def confirm(self, keypair: Keypair) -> Keypair | None:
        """First packet received on `next`: it becomes current. Returns the dropped keypair."""
        if keypair is not self.next:
            return None
        dropped = self.previous
        self.previous, self.current, self.next = self.current, keypair, None
        return dropped

    def clear(self) -> list[Keypair]:
        dropped = self.all()
        self.previous = self.current = self.next = None
        return dropped
