"""Which peer owns an address: the DNS process's view of the peers' allowed IPs.

Built from the config at start, then replaced by every table the crypto process sends
(gateway/dataplane/mappings.py `PeerAddresses`: at its start and after `wg set` or a
reload), so an address moved with `wg set` counts for its new owner at once.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from gateway.ipnet import IPNetwork
from gateway.wireguard.allowedips import AllowedIPs


class PeerDirectory:
    def __init__(self, peers: Iterable[tuple[bytes, Iterable[IPNetwork]]] = ()) -> None:
        self._owners: AllowedIPs[bytes] = AllowedIPs()
        self.replace(peers)

    def replace(self, peers: Iterable[tuple[bytes, Iterable[IPNetwork]]]) -> None:
        owners: AllowedIPs[bytes] = AllowedIPs()
        for key, networks in peers:
            for network in networks:
                owners.insert(network, key)
        self._owners = owners

    def peer_of(self, address: str) -> bytes | None:
        """The public key of the peer whose allowed IPs hold `address`, or None."""
        try:
            return self._owners.lookup_ip(ipaddress.ip_address(address))
        except ValueError:
            return None
