"""TUN devices (multi-queue) and their netlink configuration.

The data plane codes against `Tun` (tunio.base); `open_multiqueue` and `TunDeviceManager`
are the Linux leaf; `tunio.fake.FakeTun` stands in for a queue in unit tests.
"""

from tunio.base import DEFAULT_BATCH, Tun, TunStats
from tunio.errors import DeviceExistsError, DeviceInUseError, NetlinkError, TunError
from tunio.linux import TunQueue, open_multiqueue
from tunio.netlink import TunDeviceManager

__all__ = [
    "DEFAULT_BATCH",
    "DeviceExistsError",
    "DeviceInUseError",
    "NetlinkError",
    "Tun",
    "TunDeviceManager",
    "TunError",
    "TunQueue",
    "TunStats",
    "open_multiqueue",
]
