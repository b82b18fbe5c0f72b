"""Cryptokey routing: longest-prefix match from an IP address to the peer that owns it.

One table per address family, split by prefix length: `{prefix_len: {address >> host_bits:
value}}`. A lookup tries the prefix lengths in use from longest to shortest, one dict probe
each, so its cost depends on how many distinct lengths are in use (at most 33 or 129), not
on how many prefixes there are. A small result cache keyed by the raw address bytes makes
the common case (a few busy destinations) a single dict probe; any change clears it.
(bench/bench_allowedips.py compares this with a binary trie: the trie was slower.)
"""

from __future__ import annotations

from collections.abc import Hashable
from ipaddress import IPv4Address, IPv6Address
from typing import Generic, TypeVar

from gateway.ipnet import IPNetwork

T = TypeVar("T", bound=Hashable)

Network = IPNetwork  # the core's name for it

_V4_BYTES = 4
_V6_BYTES = 16
# Bounded: a cache that fills is cleared, never grown (a scan of many addresses cannot make
# it use more memory than this).
CACHE_MAX_ENTRIES = 4096
_MISS = object()


class _FamilyTable(Generic[T]):
    """Prefixes of one address family, indexed by length."""

    def __init__(self, bits: int) -> None:
        self.bits = bits
        self.by_len: dict[int, dict[int, T]] = {}
        # (shift, table) for each prefix length in use, longest prefix first.
        self.levels: list[tuple[int, dict[int, T]]] = []

    def _relevel(self) -> None:
        self.levels = [
            (self.bits - plen, self.by_len[plen]) for plen in sorted(self.by_len, reverse=True)
        ]

    def insert(self, plen: int, key: int, value: T) -> T | None:
        table = self.by_len.get(plen)
        if table is None:
            table = self.by_len[plen] = {}
            self._relevel()
        old = table.get(key)
        table[key] = value
        return old

    def remove(self, plen: int, key: int) -> T | None:
        table = self.by_len.get(plen)
        if table is None:
            return None
        old = table.pop(key, None)
        if not table:
            del self.by_len[plen]
            self._relevel()
        return old

    def lookup(self, addr: int) -> T | None:
        for shift, table in self.levels:
            value = table.get(addr >> shift)
            if value is not None:
                return value
        return None


class AllowedIPs(Generic[T]):
    """Maps IPv4/IPv6 prefixes to values (peers); each prefix belongs to one value."""

    def __init__(self) -> None:
        self._v4: _FamilyTable[T] = _FamilyTable(32)
        self._v6: _FamilyTable[T] = _FamilyTable(128)
        self._by_value: dict[T, set[Network]] = {}
        self._cache: dict[bytes, object] = {}
        # Bumped by every change, so callers can cache what they derived from lookups.
        self.version = 0

    def __len__(self) -> int:
        return sum(len(nets) for nets in self._by_value.values())

    def _family(self, network: Network) -> _FamilyTable[T]:
        return self._v4 if network.version == 4 else self._v6  # noqa: PLR2004 # IP version

    @staticmethod
    def _key(network: Network) -> int:
        return int(network.network_address) >> (network.max_prefixlen - network.prefixlen)

    def insert(self, network: Network, value: T) -> None:
        """Route `network` to `value`, taking it away from any value that had it before."""
        old = self._family(network).insert(network.prefixlen, self._key(network), value)
        if old is not None and old != value:
            self._forget(old, network)
        self._by_value.setdefault(value, set()).add(network)
        self._cache.clear()
        self.version += 1

    def remove(self, network: Network) -> bool:
        """Remove one prefix; False when it was not in the table."""
        old = self._family(network).remove(network.prefixlen, self._key(network))
        if old is None:
            return False
        self._forget(old, network)
        self._cache.clear()
        self.version += 1
        return True

    def remove_value(self, value: T) -> int:
        """Remove every prefix of `value` (a removed peer); returns how many there were."""
        networks = self._by_value.pop(value, set())
        for network in networks:
            self._family(network).remove(network.prefixlen, self._key(network))
        if networks:
            self._cache.clear()
            self.version += 1
        return len(networks)

    def _forget(self, value: T, network: Network) -> None:
        networks = self._by_value.get(value)
        if networks is not None:
            networks.discard(network)
            if not networks:
                del self._by_value[value]

    def items(self) -> list[tuple[T, set[Network]]]:
        """Every value with its prefixes (a copy)."""
        return [(value, set(networks)) for value, networks in self._by_value.items()]

    def prefixes_of(self, value: T) -> list[Network]:
        """The prefixes routed to `value`, IPv4 first, then by address and length."""
        return sorted(
            self._by_value.get(value, ()),
            key=lambda n: (n.version, int(n.network_address), n.prefixlen),
        )

    def lookup(self, addr: bytes | bytearray | memoryview) -> T | None:
        """Longest-prefix match of a raw 4- or 16-byte address; None for no match or a bad length.

        Accepts anything bytes-like that `int.from_bytes` takes (a slice of an IP header).
        """
        cache = self._cache
        key = bytes(addr)
        hit = cache.get(key, _MISS)
        if hit is not _MISS:
            return hit  # type: ignore[return-value]  # the cache only ever holds T | None
        size = len(key)
        if size == _V4_BYTES:
            value = self._v4.lookup(int.from_bytes(key, "big"))
        elif size == _V6_BYTES:
            value = self._v6.lookup(int.from_bytes(key, "big"))
        else:
            return None
        if len(cache) >= CACHE_MAX_ENTRIES:
            cache.clear()
        cache[key] = value
        return value

    def lookup_ip(self, ip: IPv4Address | IPv6Address) -> T | None:
        return self.lookup(ip.packed)
