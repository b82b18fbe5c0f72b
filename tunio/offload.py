"""Coalescing TCP segments into one TUN write (GRO done in user space), sans-I/O.

With IFF_VNET_HDR every TUN read and write carries a 10-byte virtio_net_hdr. A write whose
header says GSO_TCPV4/GSO_TCPV6 hands the kernel one "super-packet" holding many TCP segments
of one flow: the stack forwards (and a local receiver consumes) it as one packet, as if the
NIC had done GRO. That saves the per-packet cost of routing, forwarding and the receiver's
ACKs, which in a Python gateway is much of the cost of a packet. The kernel finishes the TCP
checksum (NEEDS_CSUM), so no payload is ever summed here.

Segments merge only when the kernel's own GRO would merge them: same flow (addresses, ports,
TTL and TOS), contiguous sequence numbers, ACK (and PSH on the last) as the only flags, equal
TCP header (options, acknowledgement, window), equal payload sizes with only the last one
allowed to be shorter, and no IP options, extension headers or fragments.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

VNET_HDR = struct.Struct("<BBHHHH")  # flags, gso_type, hdr_len, gso_size, csum_start, csum_offset
VNET_HDR_LEN = VNET_HDR.size  # 10
VIRTIO_NET_HDR_F_NEEDS_CSUM = 1
VIRTIO_NET_HDR_GSO_TCPV4 = 1
VIRTIO_NET_HDR_GSO_TCPV6 = 4
PLAIN_HDR = bytes(VNET_HDR_LEN)  # no offload: the packet is complete as it is
TCP_CHECKSUM_OFFSET = 16
MAX_SEGMENTS = 64  # segments per super-packet, as the kernel's GRO allows

_IPV4_HEADER = 20
_IPV6_HEADER = 40
_TCP_HEADER = 20
_TCP = 6
_ACK, _PSH = 0x10, 0x08
_MAX_TCP_LENGTH = 65535 - _IPV4_HEADER  # the IPv4 total length field is 16 bits

Packet = bytes | bytearray | memoryview
IoVec = list[Packet]


# One unpack per packet instead of a slice per field (this runs for every TCP segment a
# worker writes). IPv4 + TCP: version/IHL, TOS, total length, flags/fragment offset, TTL,
# protocol, addresses and ports, sequence, then from the TCP header: acknowledgement, data
# offset, flags, window.
_V4_TCP = struct.Struct("!BBH2xHBB2x12sIIBBH")
# IPv6 + TCP: version/class/flow label word, payload length, next header, hop limit,
# addresses and ports, sequence, acknowledgement, data offset, flags, window.
_V6_TCP = struct.Struct("!4sHBB36sIIBBH")


class _Segment:
    """The fields of a TCP packet (no IP options or extension headers) that merging needs.

    `fixed` holds the TCP header fields that must be equal to merge: acknowledgement, data
    offset, window, urgent pointer and options (not the flags, which may differ by PSH, nor
    the checksum).
    """

    __slots__ = ("fixed", "flags", "hlen", "ip_hlen", "key", "payload", "seq")

    def __init__(self, packet: Packet) -> None:
        size = len(packet)
        if packet[0] == 0x45:  # noqa: PLR2004 - IPv4, 20-byte header
            ip_hlen = _IPV4_HEADER
            if size < ip_hlen + _TCP_HEADER:
                raise ValueError
            _, tos, total, frag, ttl, proto, ends, seq, ack, offset, flags, window = (
                _V4_TCP.unpack_from(packet)
            )
            if proto != _TCP or frag & 0x3FFF or total != size:  # 0x3FFF: MF or an offset
                raise ValueError
            # Addresses and ports, plus TOS and TTL, which must match to merge.
            self.key: tuple[bytes, int, int] = (ends, tos, ttl)
        elif packet[0] >> 4 == 6:  # noqa: PLR2004 - IP version
            ip_hlen = _IPV6_HEADER
            if size < ip_hlen + _TCP_HEADER:
                raise ValueError
            first, length, proto, hop, ends, seq, ack, offset, flags, window = _V6_TCP.unpack_from(
                packet
            )
            if proto != _TCP or length + ip_hlen != size:
                raise ValueError
            # Addresses and ports, plus version, class, flow label and hop limit.
            self.key = (ends, int.from_bytes(first, "big"), hop)
        else:
            raise ValueError
        self.ip_hlen = ip_hlen
        hlen: int = ip_hlen + (offset >> 4) * 4
        self.hlen = hlen
        self.payload = size - hlen
        if hlen < ip_hlen + _TCP_HEADER or self.payload < 0:
            raise ValueError
        self.flags: int = flags
        self.seq: int = seq
        self.fixed: tuple[int, int, int, bytes] = (
            ack,
            offset,
            window,
            bytes(packet[ip_hlen + 18 : hlen]),
        )

    @property
    def mergeable(self) -> bool:
        return self.payload > 0 and self.flags & _ACK != 0 and self.flags & ~(_ACK | _PSH) == 0


class _Run:
    """Consecutive segments of one flow being merged into a super-packet."""

    __slots__ = (
        "closed",
        "first",
        "fixed",
        "hlen",
        "ip_hlen",
        "mss",
        "next_seq",
        "parts",
        "psh",
        "size",
    )

    def __init__(self, packet: Packet, seg: _Segment) -> None:
        self.first = packet
        self.ip_hlen, self.hlen, self.mss = seg.ip_hlen, seg.hlen, seg.payload
        self.next_seq = (seg.seq + seg.payload) & 0xFFFFFFFF
        self.fixed = seg.fixed
        self.parts: list[Packet] = [memoryview(packet)[seg.hlen :]]
        self.size = seg.payload
        self.psh = bool(seg.flags & _PSH)
        self.closed = self.psh  # nothing may follow a PSH

    def add(self, packet: Packet, seg: _Segment) -> bool:
        """Take `seg` if it continues this run; False (and nothing changes) otherwise."""
        if (
            self.closed
            or seg.seq != self.next_seq
            or seg.payload > self.mss
            or seg.hlen != self.hlen
            or len(self.parts) >= MAX_SEGMENTS
            or self.hlen - self.ip_hlen + self.size + seg.payload > _MAX_TCP_LENGTH
            or seg.fixed != self.fixed
        ):
            return False
        self.parts.append(memoryview(packet)[seg.hlen :])
        self.size += seg.payload
        self.next_seq = (self.next_seq + seg.payload) & 0xFFFFFFFF
        self.psh = bool(seg.flags & _PSH)
        self.closed = self.psh or seg.payload < self.mss
        return True

    def iovec(self) -> IoVec:
        first = self.first
        if len(self.parts) == 1:
            return [PLAIN_HDR, first]
        ip_hlen, hlen = self.ip_hlen, self.hlen
        tcp_len = hlen - ip_hlen + self.size
        ip = bytearray(first[:ip_hlen])
        tcp = bytearray(first[ip_hlen:hlen])
        if self.psh:
            tcp[13] |= _PSH  # the merged packet carries the last segment's PSH
        if ip_hlen == _IPV4_HEADER:
            struct.pack_into("!H", ip, 2, ip_hlen + tcp_len)
            ip[10:12] = b"\0\0"
            struct.pack_into("!H", ip, 10, _fold(_sum16(ip)) ^ 0xFFFF)
            pseudo = _sum16(ip[12:20]) + _TCP + tcp_len
            gso_type = VIRTIO_NET_HDR_GSO_TCPV4
        else:
            struct.pack_into("!H", ip, 4, tcp_len)
            pseudo = _sum16(ip[8:40]) + _TCP + tcp_len
            gso_type = VIRTIO_NET_HDR_GSO_TCPV6
        # NEEDS_CSUM: the field holds the pseudo-header sum; the kernel adds the rest.
        struct.pack_into("!H", tcp, TCP_CHECKSUM_OFFSET, _fold(pseudo))
        header = VNET_HDR.pack(
            VIRTIO_NET_HDR_F_NEEDS_CSUM, gso_type, hlen, self.mss, ip_hlen, TCP_CHECKSUM_OFFSET
        )
        return [header, ip, tcp, *self.parts]


def _sum16(data: Packet) -> int:
    return sum(struct.unpack(f"!{len(data) // 2}H", data))


def _fold(total: int) -> int:
    while total > 0xFFFF:  # noqa: PLR2004 - 16-bit ones' complement
        total = (total & 0xFFFF) + (total >> 16)
    return total


def coalesce(packets: Sequence[Packet]) -> list[IoVec]:
    """The TUN writes for `packets`, each an iovec that starts with its vnet header.

    Order within every flow is kept; packets that cannot merge go alone with a plain header.
    """
    writes: list[IoVec] = []
    runs: dict[tuple[bytes, int, int], _Run] = {}
    for packet in packets:
        try:
            seg = _Segment(packet)
        except (ValueError, IndexError):
            writes.append([PLAIN_HDR, packet])
            continue
        run = runs.get(seg.key)
        if run is not None:
            if seg.mergeable and run.add(packet, seg):
                continue
            writes.append(run.iovec())  # flush first: order within the flow
            del runs[seg.key]
        if seg.mergeable:
            runs[seg.key] = _Run(packet, seg)
        else:
            writes.append([PLAIN_HDR, packet])
    writes.extend(run.iovec() for run in runs.values())
    return writes
