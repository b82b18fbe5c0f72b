"""Transport keypairs and their rotation (previous / current / next), as wireguard-go keypair.go."""

from __future__ import annotations

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from gateway.wireguard.constants import REJECT_AFTER_MESSAGES, REJECT_AFTER_TIME
from gateway.wireguard.noise import SessionKeys
from gateway.wireguard.replay import ReplayFilter


class Keypair:
    """One direction pair of transport keys; the AEAD objects are reused for every packet."""

    __slots__ = (
        "created",
        "is_initiator",
        "local_index",
        "recv",
        "remote_index",
        "replay",
        "send",
        "send_counter",
    )

    def __init__(self, keys: SessionKeys, created: float) -> None:
        self.send = ChaCha20Poly1305(keys.send_key)
        self.recv = ChaCha20Poly1305(keys.recv_key)
        self.send_counter = 0
        self.replay = ReplayFilter()
        self.created = created
        self.is_initiator = keys.is_initiator
        self.local_index = keys.local_index
        self.remote_index = keys.remote_index

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
