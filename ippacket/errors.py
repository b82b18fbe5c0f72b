"""The two exceptions of ippacket; both are ValueErrors, so one `except PacketError` takes both.

* `MalformedPacket`: parsing found bytes that are not a packet this library can read (truncated,
  wrong version, header lengths that do not fit). Raised by `IpPacket(...)` only; no accessor
  of a parsed packet raises it later, because parsing checked every length an accessor uses.
* `ImpossiblePacket`: a builder or setter was asked for something no valid packet can hold
  (IPv4 source with an IPv6 destination, a payload over 65535 bytes, a port on a packet without
  ports, a value out of its field's range, an ICMP error about an ICMP error).
"""

from __future__ import annotations


class PacketError(ValueError):
    """Base of every error this package raises on bad input."""


class MalformedPacket(PacketError):
    """The bytes given to `IpPacket` are not a well-formed IPv4/IPv6 packet."""


class ImpossiblePacket(PacketError):
    """A builder or setter was asked for a packet that cannot exist."""
