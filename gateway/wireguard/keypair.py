"""Transport keypairs and their rotation (previous / current / next), as wireguard-go keypair.go."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.wireguard.constants import REJECT_AFTER_MESSAGES, REJECT_AFTER_TIME
from gateway.wireguard.noise import SessionKeys

if TYPE_CHECKING:
    from gateway.wireguard.session_crypto import Sessions


class Keypair:
    """One direction pair of transport keys. The AEADs, the send counter and the replay
    window live in the Device's transport (native or Python, gateway/wireguard/session_crypto.py
    and gateway/dataplane/transport.py), installed under our receiver index: the per-packet
    path and the Device's own packets share one counter and one window.

    `send_limit`: counters below it may be sent (the transport holds it too). Without a
    session table it is the protocol's limit; with one (gateway/wireguard/sessions.py) it is
    the end of the block of counters reserved, and persisted, for this keypair: a counter at
    the limit waits until the next block's end is persisted, so a successor that restores
    the session starts past every counter this process may have used. `record` is the
    keypair's place in that table (-1: none) and `replay` its window there (None: not kept),
    which the Device writes from the transport's after packets were accepted. `created` is
    monotonic time, the same in every process of one boot.
    """

    __slots__ = (
        "_send_limit",
        "created",
        "is_initiator",
        "local_index",
        "record",
        "recv_key",
        "remote_index",
        "replay",
        "send_key",
        "transport",
    )

    def __init__(
        self, keys: SessionKeys, created: float, transport: Sessions, peer_id: int = 0
    ) -> None:
        self.transport = transport
        self.send_key = keys.send_key
        self.recv_key = keys.recv_key
        self._send_limit = REJECT_AFTER_MESSAGES
        self.record = -1
        self.replay: memoryview | None = None
        self.created = created
        self.is_initiator = keys.is_initiator
        self.local_index = keys.local_index
        self.remote_index = keys.remote_index
        # An initiator's session carries data at once; a responder's only once the first
        # packet on it confirmed it (the Device confirms it then).
        transport.install(
            keys.local_index,
            remote=keys.remote_index,
            send_key=keys.send_key,
            recv_key=keys.recv_key,
            created=created,
            peer=peer_id,
            confirmed=keys.is_initiator,
        )

    @property
    def send_counter(self) -> int:
        """The next counter to send with (REJECT_AFTER_MESSAGES once removed)."""
        counter = self.transport.send_counter(self.local_index)
        return REJECT_AFTER_MESSAGES if counter is None else counter

    @send_counter.setter
    def send_counter(self, value: int) -> None:
        """Move the counter forward (a restored session, tests of the limits); it never
        goes back."""
        if not self.transport.advance_send_counter(self.local_index, value):
            raise ValueError("a send counter only moves forward")

    @property
    def send_limit(self) -> int:
        return self._send_limit

    @send_limit.setter
    def send_limit(self, value: int) -> None:
        self._send_limit = value
        self.transport.set_send_limit(self.local_index, value)

    def keep_window(self) -> None:
        """Write the transport's replay window into the kept record (if kept)."""
        if self.replay is not None:
            window = self.transport.replay_window(self.local_index)
            if window is not None:
                self.replay[:] = memoryview(window).cast("Q")

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
