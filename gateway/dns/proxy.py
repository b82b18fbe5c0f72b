"""Proxy addresses for DNS resources: which address stands for which name.

A peer granted a DNS resource that asks for a matching name gets one IPv4 address from
100.96.0.0/11 and one IPv6 address from fd00:2021:1111:8000::/107 (Firezone's ranges) in
place of the real ones; packets to them are translated to the name's real addresses. One
pair per name, shared by every peer (the policy decides who may use it), stable while it is
in use. A name's pair is found from a hash of the name (the next free one on a collision), so
a restarted or reconfigured DNS process hands a name the pair it had before, and the crypto
process's mapping for that pair stays right. Bounded: at most `capacity` names; when full,
the name used longest ago gives its pair to the new one (its peers re-resolve within the
answer's short TTL).
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections import OrderedDict
from dataclasses import dataclass

import dns.name

from gateway.resources.proxy_ranges import IPV4_RANGE, IPV6_RANGE

DEFAULT_CAPACITY = 65536


@dataclass(frozen=True, slots=True)
class ProxyPair:
    v4: ipaddress.IPv4Address
    v6: ipaddress.IPv6Address


class ProxyAddresses:
    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if not 0 < capacity <= min(IPV4_RANGE.num_addresses, IPV6_RANGE.num_addresses):
            raise ValueError(f"capacity must be 1..{IPV4_RANGE.num_addresses}, got {capacity}")
        self.capacity = capacity
        # Keyed by the name's canonical wire form (bytes hash once; a Name hashes every time).
        self._by_key: OrderedDict[tuple[bytes, int], int] = OrderedDict()  # LRU first
        self._by_slot: dict[int, dns.name.Name] = {}

    def __len__(self) -> int:
        return len(self._by_key)

    def assign(self, name: dns.name.Name, resource: int = 0) -> ProxyPair:
        """The pair for `name` under `resource`, assigning one if it has none; marks it as
        just used."""
        key = (name.to_digestable(), resource)
        slot = self._by_key.get(key)
        if slot is None:
            if len(self._by_key) < self.capacity:
                slot = self._home_slot(key)
                while slot in self._by_slot:
                    slot = (slot + 1) % self.capacity
            else:
                _, slot = self._by_key.popitem(last=False)
            self._by_key[key] = slot
            self._by_slot[slot] = name.canonicalize()
        else:
            self._by_key.move_to_end(key)
        return self.pair(slot)

    def release(self, name: dns.name.Name, resource: int = 0) -> None:
        """Free the pair of `name` under `resource` (nobody holds it any more)."""
        slot = self._by_key.pop((name.to_digestable(), resource), None)
        if slot is not None:
            del self._by_slot[slot]

    def _home_slot(self, key: tuple[bytes, int]) -> int:
        name, resource = key
        # Resource 0 hashes the name alone: pairs handed out before pairs had a resource stay.
        salt = resource.to_bytes(4, "big") if resource else b""
        digest = hashlib.blake2b(name + salt, digest_size=8).digest()
        return int.from_bytes(digest) % self.capacity

    @staticmethod
    def pair(slot: int) -> ProxyPair:
        # Skip the network address of each range, so no proxy address ends in .0 / ::.
        return ProxyPair(IPV4_RANGE[slot + 1], IPV6_RANGE[slot + 1])

    def name_of(
        self, address: ipaddress.IPv4Address | ipaddress.IPv6Address
    ) -> dns.name.Name | None:
        """The name a proxy address stands for now, if any."""
        network = IPV4_RANGE if address.version == 4 else IPV6_RANGE  # noqa: PLR2004 - IP version
        if address not in network:
            return None
        return self._by_slot.get(int(address) - int(network.network_address) - 1)
