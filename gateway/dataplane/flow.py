"""Which TUN worker gets a decrypted packet: the same one for every packet of a flow.

Order within a flow must hold (TCP collapses when reordered) and each ring keeps order, so a
flow must map to one worker. The key is the address pair plus, for TCP/UDP/SCTP, the ports;
fragments and other protocols hash on addresses only (they still stay on one worker).
Where the ports follow the addresses the key is one slice: crc32 chains, so crc32(a + b) is
crc32(b, crc32(a)) and the worker is the same as hashing the two parts.
"""

from __future__ import annotations

from zlib import crc32

_PORT_PROTOCOLS = frozenset({6, 17, 132})  # TCP, UDP, SCTP
_IPV4_HEADER = 20  # without options
_IPV6_HEADER = 40


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
