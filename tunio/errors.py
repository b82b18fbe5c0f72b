"""Errors raised by tunio; each message names the device and the operation."""

from __future__ import annotations


class TunError(Exception):
    """Base class for TUN device and netlink failures."""


class DeviceInUseError(TunError):
    """A device with this name exists and another process holds its queues."""


class DeviceExistsError(TunError):
    """A device with this name exists and was not made by firezone-gw."""


class NetlinkError(TunError):
    """A netlink request failed; the message names the operation and the device."""
