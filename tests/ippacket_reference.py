"""scapy as the independent reference for ippacket's tests: decode a packet's fields and
recompute its checksums from scratch, with none of ippacket's code involved."""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import ip_address

from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import (
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.packet import NoPayload, Packet, Raw

from ippacket import IpAddress

EXTENSIONS = (IPv6ExtHdrHopByHop, IPv6ExtHdrRouting, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment)
ICMPV6_ECHO = (128, 129)
CHECKSUM_FIELDS = ("chksum", "cksum")


@dataclass
class Fields:
    """What ippacket should read from a packet, as scapy decodes it."""

    version: int
    source: IpAddress
    destination: IpAddress
    protocol: int
    non_first_fragment: bool
    source_port: int | None = None
    destination_port: int | None = None
    icmp_type: int | None = None
    icmp_code: int | None = None
    echo_id: int | None = None
    echo_sequence: int | None = None


def decode(data: bytes) -> Fields:
    ip: Packet = IP(data) if data[0] >> 4 == 4 else IPv6(data)
    layer = ip.payload
    if ip.version == 4:
        protocol = ip.proto
        non_first = ip.frag != 0
    else:
        protocol, non_first = ip.nh, False
        while isinstance(layer, EXTENSIONS):
            if isinstance(layer, IPv6ExtHdrFragment) and layer.offset != 0:
                non_first = True
            protocol = layer.nh
            layer = layer.payload
    fields = Fields(
        ip.version, ip_address(ip.src), ip_address(ip.dst), protocol, non_first_fragment=non_first
    )
    if non_first or isinstance(layer, (Raw, NoPayload)):
        return fields
    if isinstance(layer, (TCP, UDP)):
        fields.source_port, fields.destination_port = layer.sport, layer.dport
    elif isinstance(layer, ICMP) or (ip.version == 6 and protocol == 58):
        fields.icmp_type, fields.icmp_code = layer.type, layer.code
        if (ip.version == 4 and layer.type in (0, 8)) or (
            ip.version == 6 and layer.type in ICMPV6_ECHO
        ):
            fields.echo_id, fields.echo_sequence = layer.id, layer.seq
    return fields


def recomputed(data: bytes) -> bytes:
    """`data` with the IPv4 header and transport checksums computed afresh by scapy (a UDP
    checksum of 0, meaning none, stays 0). Stops at the transport layer, so the packet quoted
    in an ICMP error is left as it is."""
    ip: Packet = IP(data) if data[0] >> 4 == 4 else IPv6(data)
    layer: Packet = ip
    while not isinstance(layer, NoPayload):
        for name in CHECKSUM_FIELDS:  # scapy's ICMPv6 layers call it cksum
            if name in layer.fields and not (isinstance(layer, UDP) and layer.chksum == 0):
                setattr(layer, name, None)
        if layer is not ip and not isinstance(layer, EXTENSIONS):
            break
        layer = layer.payload
    return bytes(ip)
