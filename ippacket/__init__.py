"""ippacket: IPv4/IPv6 packets parsed, read, rewritten and built in place (like connlib's
ip-packet crate), for the data plane's policy, DNS and NAT work. No dependency on `gateway`.

Guarantees:

* No copy: `IpPacket(buf)` reads the caller's bytearray or memoryview (a ring slot) in place;
  fields are decoded only when read, setters write into the same buffer.
* One exception per job: parsing raises only `MalformedPacket`; builders and setters raise only
  `ImpossiblePacket` for a request no packet can hold. Both derive from `PacketError`
  (a ValueError). Anything else escaping is a bug.
* Rewrites keep every checksum right incrementally (RFC 1624), never by re-summing the payload;
  a UDP checksum of 0 (none computed) stays 0.
* Debug checks: setting an ICMP echo identifier/sequence on an ICMP message that is not an echo
  raises AssertionError unless Python runs with -O (as connlib's debug_assert!).

Modules: `packet` (IpPacket), `headers` (read-only header views, protocol numbers), `checksum`
(RFC 1071/1624), `build` (plain packets), `icmp_errors` (ICMP errors quoting a packet), `errors`.
"""

from ippacket.errors import ImpossiblePacket, MalformedPacket, PacketError
from ippacket.packet import IpAddress, IpPacket

__all__ = ["ImpossiblePacket", "IpAddress", "IpPacket", "MalformedPacket", "PacketError"]
