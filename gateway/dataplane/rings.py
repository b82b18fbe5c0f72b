"""The rings between the processes, as the loops see them.

`PacketRing` is what a loop uses of a ring (shm_ring.Ring, or an in-memory ring in tests);
`CryptoRings` are the crypto process's rings.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar


class PacketRing(Protocol):
    """What the crypto loop uses of a ring: shm_ring.Ring, or an in-memory ring in tests."""

    @property
    def max_message(self) -> int: ...  # the largest message (packet) it carries, in bytes

    def send_ready(self) -> bool: ...

    def free_slots(self) -> int: ...

    def send_many(self, packets: Sequence[bytes | bytearray | memoryview]) -> int: ...

    def recv_many(self, max_packets: int = ...) -> list[memoryview]: ...

    def release(self) -> None: ...


RingT = TypeVar("RingT", bound=PacketRing)


@dataclass
class CryptoRings(Generic[RingT]):
    """The crypto process's rings: a pair with the UDP process, a pair per TUN worker."""

    from_udp: RingT
    to_udp: RingT
    from_workers: Sequence[RingT]
    to_workers: Sequence[RingT]
