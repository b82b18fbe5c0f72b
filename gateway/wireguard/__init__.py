"""Sans-I/O WireGuard protocol core: bytes and a clock in, bytes to send out."""

from gateway.endpoint import Endpoint
from gateway.wireguard.device import UNCHANGED, Datagram, Device
from gateway.wireguard.peer import Peer

__all__ = ["UNCHANGED", "Datagram", "Device", "Endpoint", "Peer"]
