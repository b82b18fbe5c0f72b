"""The rings between the processes: as the loops see them, and all of them as one object.

`PacketRing` is what a loop uses of a ring (shm_ring.Ring, or an in-memory ring in tests);
`CryptoRings` are the crypto process's rings. `RingTopology` is every ring of a gateway,
made by the supervisor before it forks (anonymous shared memory: only processes forked from
it can reach a ring); it says which rings and eventfds each child uses, and names each ring
for the stats segment (gateway/topology.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from gateway import topology
from gateway.dataplane.children import ChildFds
from gateway.dataplane.framing import HEADER_SIZE
from gateway.wireguard.constants import TRANSPORT_OVERHEAD
from shm_ring.ring import Ring

RING_SLOTS = 1000  # slots per ring
# Clients commonly run wg-quick's MTU 1420 (or 1500 on some links) while the gateway's TUN
# uses 1280: slots hold at least this much so their packets still take one slot each.
MIN_INNER_PACKET = 1500


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


@dataclass(frozen=True)
class RingTopology:
    """Every ring of a gateway: a pair per TUN worker, a pair between crypto and UDP."""

    udp_to_crypto: Ring
    crypto_to_udp: Ring
    workers_to_crypto: tuple[Ring, ...]
    crypto_to_workers: tuple[Ring, ...]

    @classmethod
    def create(cls, workers: int, mtu: int) -> RingTopology:
        """Slots sized for `mtu`; a larger packet (the MTU raised at run time, up to 65535)
        spans several slots, so the rings never limit the MTU."""
        inner = max(mtu, MIN_INNER_PACKET)
        datagram = HEADER_SIZE + TRANSPORT_OVERHEAD + inner + 16  # + padding to 16

        def ring(name: str, slot_size: int) -> Ring:
            return Ring.create(name, slots=RING_SLOTS, slot_size=slot_size)

        return cls(
            udp_to_crypto=ring(topology.UDP_TO_CRYPTO, datagram),
            crypto_to_udp=ring(topology.CRYPTO_TO_UDP, datagram),
            workers_to_crypto=tuple(
                ring(topology.worker_to_crypto(i), inner) for i in range(workers)
            ),
            crypto_to_workers=tuple(
                ring(topology.crypto_to_worker(i), inner) for i in range(workers)
            ),
        )

    def by_name(self) -> dict[str, Ring]:
        """Each ring under its name in gateway/topology.py."""
        named = {
            topology.UDP_TO_CRYPTO: self.udp_to_crypto,
            topology.CRYPTO_TO_UDP: self.crypto_to_udp,
        }
        for i, (to_crypto, from_crypto) in enumerate(
            zip(self.workers_to_crypto, self.crypto_to_workers, strict=True)
        ):
            named[topology.worker_to_crypto(i)] = to_crypto
            named[topology.crypto_to_worker(i)] = from_crypto
        return named

    def for_crypto(self) -> CryptoRings[Ring]:
        return CryptoRings(
            from_udp=self.udp_to_crypto,
            to_udp=self.crypto_to_udp,
            from_workers=list(self.workers_to_crypto),
            to_workers=list(self.crypto_to_workers),
        )

    def worker_fds(self, index: int) -> ChildFds:
        return ring_fds([self.crypto_to_workers[index]], [self.workers_to_crypto[index]])

    def udp_fds(self) -> ChildFds:
        return ring_fds([self.crypto_to_udp], [self.udp_to_crypto])

    def crypto_fds(self) -> ChildFds:
        return ring_fds(
            [self.udp_to_crypto, *self.workers_to_crypto],
            [self.crypto_to_udp, *self.crypto_to_workers],
        )

    def close(self) -> None:
        for ring in self.by_name().values():
            with contextlib.suppress(OSError):
                ring.close()


def ring_fds(consumes: Sequence[Ring], produces: Sequence[Ring]) -> ChildFds:
    """Both eventfds of each ring (a producer wakes its consumer and vice versa); the ones
    the child's epoll waits on come first."""
    wake = [r.consumer_fd() for r in consumes] + [r.producer_fd() for r in produces]
    other = [r.producer_fd() for r in consumes] + [r.consumer_fd() for r in produces]
    return ChildFds(rings=tuple(wake), other=tuple(other))
