"""The HA link in the crypto process (gateway/ha): built from the config, DNS proxy mappings
converted between the DNS process's messages and the replication's changes."""

from __future__ import annotations

from gateway.config import GatewayConfig
from gateway.dataplane.mappings import MappingMessage, apply_message
from gateway.ha.codec import DnsMapping
from gateway.ha.link import HaService
from gateway.ha.node import HaNode
from gateway.ha.role import read_role
from gateway.nat.handler import ProxyHandler
from gateway.wireguard.device import Device


def to_change(message: MappingMessage) -> DnsMapping:
    return DnsMapping(
        message.resource, message.proxy_v4, message.proxy_v6, message.real_v4, message.real_v6
    )


def to_message(mapping: DnsMapping) -> MappingMessage:
    return MappingMessage(
        0, mapping.resource, mapping.proxy_v4, mapping.proxy_v6, mapping.real_v4, mapping.real_v6
    )


def start_ha(config: GatewayConfig, device: Device, proxy: ProxyHandler | None) -> HaService | None:
    """The running HA service of a config with `[ha]`, or None."""
    if config.ha is None:
        return None
    node = HaNode(
        device,
        lambda: device.sessions,
        role=read_role() or config.ha.role,
        rate=config.ha.rate,
        apply_mapping=None if proxy is None else lambda m: apply_message(proxy, to_message(m)),
    )
    service = HaService(node, config.ha)
    service.start()
    return service
