"""The platform-neutral TUN interface the data plane codes against."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

DEFAULT_BATCH = 100


@dataclass(slots=True)
class TunStats:
    """Per-queue counters; a queue belongs to one process, so plain ints suffice."""

    received: int = 0
    sent: int = 0
    # Drops by reason: the kernel refused the packet (EINVAL: not IPv4/IPv6, too short) ...
    dropped_rejected: int = 0
    # ... the write would have blocked (queue socket send buffer full) ...
    dropped_would_block: int = 0
    # ... or the device is down (EIO); nothing can be written until it is up again.
    dropped_device_down: int = 0
    # Segments written as part of a GSO super-packet (IFF_VNET_HDR queues only).
    coalesced: int = 0

    def drops(self) -> dict[str, int]:
        return {
            "rejected": self.dropped_rejected,
            "would_block": self.dropped_would_block,
            "device_down": self.dropped_device_down,
        }


@runtime_checkable
class Tun(Protocol):
    """One queue of a TUN device: nonblocking, batch receive, counted drops on send."""

    stats: TunStats

    def recv_many(self, max_packets: int = DEFAULT_BATCH) -> list[bytes]:
        """The packets readable now without blocking (at most `max_packets`; [] when none)."""
        ...

    def send_ready(self) -> bool:
        """Whether a write would not block right now."""
        ...

    def send(self, packet: bytes | bytearray | memoryview) -> bool:
        """Write one packet; False when it was dropped (counted in `stats`), never raises
        for a packet the kernel refuses."""
        ...

    def send_many(self, packets: Sequence[bytes | bytearray | memoryview]) -> int:
        """Write packets in order within each flow; returns how many were not dropped."""
        ...

    def fileno(self) -> int:
        """Readable when packets wait: register it with `select.epoll`."""
        ...

    def close(self) -> None: ...
