"""The crypto process's Device, built from the config and matched to it on reload.

`build_device` makes the Device once per crypto process; `apply_peers` makes its peers
match a (re)loaded config, keeping the sessions of peers that did not change.
"""

from __future__ import annotations

import time

from gateway.config import GatewayConfig
from gateway.dataplane.transport import new_transport
from gateway.gcpause import gc_paused
from gateway.wireguard.device import Device


def build_device(config: GatewayConfig, now: float) -> Device:
    """The crypto process's Device; it lives as long as the process, so it is frozen out of
    the cycle collector's way (gcpause.py)."""
    with gc_paused(freeze=True):
        device = Device(
            config.interface.private_key,
            mtu=config.interface.mtu,
            unix_time_offset=time.time() - time.monotonic(),
            transport=new_transport(),  # native unless FIREZONE_GW_NO_EXTENSIONS or not built
            under_load_threshold=None,  # the UDP process's gate judges load (one cookie secret)
        )
        apply_peers(device, config, now)
    return device


def apply_peers(device: Device, config: GatewayConfig, now: float) -> None:
    """Make the device's peers match the config; unchanged peers keep their sessions."""
    with gc_paused():
        _apply_peers(device, config, now)


def _apply_peers(device: Device, config: GatewayConfig, now: float) -> None:
    device.set_private_key(config.interface.private_key)
    wanted = {peer.public_key: peer for peer in config.peers}
    for running in list(device.peers()):
        if running.public_key not in wanted:
            device.remove_peer(running.public_key)
    for key, conf in wanted.items():
        existing = device.peer(key)
        device.upsert_peer(
            key,
            preshared_key=conf.preshared_key,
            # Keep a roamed endpoint unless the config names a different one.
            endpoint=conf.endpoint if existing is None or conf.endpoint else existing.endpoint,
            persistent_keepalive=conf.persistent_keepalive or 0,
            allowed_ips=conf.allowed_ips,
            replace_allowed_ips=True,
            now=now,
        )
