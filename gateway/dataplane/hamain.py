"""The HA link in the crypto process (gateway/ha): built from the config; DNS proxy mappings
and NAT entries converted between the ProxyHandler's types and the replication's changes."""

from __future__ import annotations

import ipaddress

from gateway.config import GatewayConfig
from gateway.dataplane.mappings import MappingMessage, apply_message
from gateway.ha.codec import DnsMapping, NatEntry, NatFlow
from gateway.ha.link import HaService
from gateway.ha.node import HaNode
from gateway.ha.role import read_role
from gateway.nat.handler import ProxyHandler
from gateway.nat.table import Entry, Inside, NatTable, Outside
from gateway.wireguard.device import Device


def to_change(message: MappingMessage) -> DnsMapping:
    return DnsMapping(
        message.resource, message.proxy_v4, message.proxy_v6, message.real_v4, message.real_v6
    )


def to_message(mapping: DnsMapping) -> MappingMessage:
    return MappingMessage(
        0, mapping.resource, mapping.proxy_v4, mapping.proxy_v6, mapping.real_v4, mapping.real_v6
    )


class ProxyReplica:
    """The ProxyHandler's mappings and NAT table as gateway/ha replicates them."""

    def __init__(self, proxy: ProxyHandler) -> None:
        self._proxy = proxy

    def apply_mapping(self, mapping: DnsMapping) -> None:
        apply_message(self._proxy, to_message(mapping))

    def nat_entries(self, now: float) -> list[NatEntry]:
        return [
            change
            for entry in self._proxy.table.entries()
            if (change := nat_change(entry, now)) is not None
        ]

    def restore_nat(self, change: NatEntry, expires: float) -> bool:
        return restore_nat(self._proxy.table, change, expires)


def nat_change(entry: Entry, now: float) -> NatEntry | None:
    """A NAT entry as a change (None for one whose peer is not a public key)."""
    inside, outside = entry.inside, entry.outside
    if not isinstance(inside.peer, bytes) or len(inside.peer) != 32:  # noqa: PLR2004 - a key
        return None
    flow = NatFlow(
        inside.peer,
        inside.protocol,
        inside.source.packed,
        inside.source_port,
        inside.proxy.packed,
        inside.destination_port,
    )
    return NatEntry(
        flow,
        outside.protocol,
        outside.real.packed,
        outside.real_port,
        outside.source.packed,
        outside.source_port,
        max(0.0, entry.expires - now),
        entry.confirmed,
    )


def restore_nat(table: NatTable, change: NatEntry, expires: float) -> bool:
    address = ipaddress.ip_address
    flow = change.flow
    inside = Inside(
        flow.peer,
        flow.protocol,
        address(flow.source),
        flow.source_port,
        address(flow.proxy),
        flow.destination_port,
    )
    outside = Outside(
        change.outside_protocol,
        address(change.real),
        change.real_port,
        address(change.outside_source),
        change.outside_port,
    )
    return table.restore(inside, outside, expires, change.confirmed)


def start_ha(config: GatewayConfig, device: Device, proxy: ProxyHandler | None) -> HaService | None:
    """The running HA service of a config with `[ha]`, or None."""
    if config.ha is None:
        return None
    node = HaNode(
        device,
        lambda: device.sessions,
        role=read_role() or config.ha.role,
        rate=config.ha.rate,
        proxy=None if proxy is None else ProxyReplica(proxy),
    )
    service = HaService(node, config.ha)
    service.start()
    return service
