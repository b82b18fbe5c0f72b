"""Flows of IP packets: which TUN worker gets a decrypted packet (the same one for every
packet of a flow), and the raw key of a plain TCP/UDP flow (the firewall's flow cache).

Order within a flow must hold (TCP collapses when reordered) and each ring keeps order, so a
flow must map to one worker. The key is the address pair plus, for TCP/UDP/SCTP, the ports;
fragments and other protocols hash on addresses only (they still stay on one worker).
Where the ports follow the addresses the key is one slice: crc32 chains, so crc32(a + b) is
crc32(b, crc32(a)) and the worker is the same as hashing the two parts. For a packet with a
`flow_key`, `key_worker` of the key is the packet's `flow_worker`: the crypto loop hashes
the key it already has when the firewall is on.
"""

from __future__ import annotations

import struct
from zlib import crc32

_PORT_PROTOCOLS = frozenset({6, 17, 132})  # TCP, UDP, SCTP
_IPV4_HEADER = 20  # without options
_IPV6_HEADER = 40
_IPV4_PLAIN = 0x45  # version 4, 20-byte header
_IPV6 = 6
_TCP, _UDP = 6, 17
_TCP_MIN, _UDP_HEADER = 20, 8

# (protocol, addresses + ports as raw bytes)
FlowKey = tuple[int, bytes]
# First byte, the flags/fragment-offset bytes, protocol, addresses and ports (bytes 0..23).
_V4_FIELDS = struct.Struct("!B5xBBxB2x12s")
# First byte, next header, addresses and ports (bytes 0..43).
_V6_FIELDS = struct.Struct("!B5xBx36s")


def flow_worker(packet: bytes | bytearray | memoryview, workers: int) -> int:
    """Worker index in range(workers) for this IP packet."""
    if workers == 1:
        return 0
    version = packet[0] >> 4
    if version == 4:  # noqa: PLR2004 - IP version
        ihl = (packet[0] & 0x0F) * 4
        key = packet[12:20]
        unfragmented = not (packet[6] & 0x3F or packet[7])
        if packet[9] in _PORT_PROTOCOLS and unfragmented:
            if ihl == _IPV4_HEADER:  # ports follow the addresses: one slice, the same crc
                return crc32(packet[12:24]) % workers
            return crc32(packet[ihl : ihl + 4], crc32(key)) % workers
        return crc32(key) % workers
    if len(packet) > _IPV6_HEADER and packet[6] in _PORT_PROTOCOLS:
        return crc32(packet[8:44]) % workers  # addresses and ports are contiguous
    return crc32(packet[8:40]) % workers


def flow_key(packet: bytes | bytearray | memoryview) -> FlowKey | None:
    """(protocol, addresses + ports as raw bytes) of a plain TCP/UDP packet, else None.

    Plain: IPv4 without options or fragments, IPv6 with the transport header first; and the
    transport header complete, as ippacket requires of a parsed packet (UDP 8 bytes, TCP its
    data offset, 20..60 bytes). One struct call reads the fields: the firewall's flow cache
    calls this for every packet.
    """
    size = len(packet)
    first = packet[0]
    if first == _IPV4_PLAIN and size >= _IPV4_HEADER + _UDP_HEADER:
        _, flags, offset_low, protocol, key = _V4_FIELDS.unpack_from(packet)
        if flags & 0x3F or offset_low:  # more fragments, or a fragment offset
            return None
        header = _IPV4_HEADER
    elif first >> 4 == _IPV6 and size >= _IPV6_HEADER + _UDP_HEADER:
        _, protocol, key = _V6_FIELDS.unpack_from(packet)
        header = _IPV6_HEADER
    else:
        return None
    if protocol == _TCP:
        room = size - header
        if room < _TCP_MIN or not _TCP_MIN <= (packet[header + 12] >> 4) * 4 <= room:
            return None
    elif protocol != _UDP:
        return None
    return protocol, key


def key_worker(flow: FlowKey, workers: int) -> int:
    """`flow_worker` of a packet from its `flow_key` (the same bytes, hashed the same way)."""
    return crc32(flow[1]) % workers
