"""Allowed-IPs lookups per second with 10 and 100,000 prefixes.

python -m bench.bench_allowedips

Three lookup patterns: a hot set of 64 destinations (served from the result cache), 100k
distinct destinations (every lookup misses the cache: the per-length dict walk), and the
same cold walk for a plain binary trie, the alternative the module's docstring rejects.
"""

from __future__ import annotations

import json
import random
import statistics
import time
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path

from gateway.wireguard.allowedips import AllowedIPs

REPEATS = 5
RESULTS = Path(__file__).parent / "results" / "allowedips.json"


class BinaryTrie:
    """One node per bit: [child0, child1, value]."""

    def __init__(self) -> None:
        self.root: list[object] = [None, None, None]

    def insert(self, key: int, bits: int, plen: int, value: int) -> None:
        node = self.root
        for i in range(plen):
            bit = (key >> (bits - 1 - i)) & 1
            child = node[bit]
            if child is None:
                child = node[bit] = [None, None, None]
            node = child  # type: ignore[assignment]  # children are nodes
        node[2] = value

    def lookup(self, addr: bytes) -> object:
        bits = len(addr) * 8
        key = int.from_bytes(addr, "big")
        node: list[object] | None = self.root
        best = None
        i = 0
        while node is not None:
            if node[2] is not None:
                best = node[2]
            if i == bits:
                break
            node = node[(key >> (bits - 1 - i)) & 1]  # type: ignore[assignment]  # a node
            i += 1
        return best


def build(count: int, rng: random.Random) -> tuple[AllowedIPs[int], BinaryTrie, list[bytes]]:
    """`count` prefixes, half IPv4 half IPv6, with mixed lengths; and matching addresses."""
    table: AllowedIPs[int] = AllowedIPs()
    trie = BinaryTrie()
    addrs: list[bytes] = []
    for i in range(count):
        if i % 2:
            plen = rng.choice([16, 24, 28, 32])
            addr = rng.getrandbits(32)
            net4 = IPv4Network((addr >> (32 - plen) << (32 - plen), plen))
            table.insert(net4, i)
            trie.insert(int(net4.network_address), 32, plen, i)
            addrs.append(addr.to_bytes(4, "big"))
        else:
            plen = rng.choice([48, 64, 96, 128])
            addr = rng.getrandbits(128)
            net6 = IPv6Network((addr >> (128 - plen) << (128 - plen), plen))
            table.insert(net6, i)
            trie.insert(int(net6.network_address), 128, plen, i)
            addrs.append(addr.to_bytes(16, "big"))
    return table, trie, addrs


def rate(fn: object, probes: list[bytes]) -> float:
    assert callable(fn)
    samples = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        for a in probes:
            fn(a)
        samples.append(len(probes) / (time.perf_counter() - start))
    return statistics.median(samples)


def main() -> None:
    rng = random.Random(5)
    rows = []
    for count in (10, 100_000):
        table, trie, addrs = build(count, rng)
        cold = [rng.choice(addrs) for _ in range(100_000)]
        hot_set = [rng.choice(addrs) for _ in range(64)]
        hot = [rng.choice(hot_set) for _ in range(100_000)]
        for a in cold[:1000]:
            assert table.lookup(a) == trie.lookup(a)

        def uncached(a: bytes, table: AllowedIPs[int] = table) -> None:
            table._cache.clear()
            table.lookup(a)

        rows.append(
            {
                "prefixes": count,
                "hot_cached_per_s": rate(table.lookup, hot),
                "cold_per_s": rate(table.lookup, cold),
                "uncached_walk_per_s": rate(uncached, cold),
                "trie_per_s": rate(trie.lookup, cold),
            }
        )
    print(f"{'prefixes':>9} {'hot(cache)/s':>13} {'cold/s':>10} {'walk/s':>10} {'trie/s':>10}")
    for r in rows:
        print(
            f"{r['prefixes']:>9} {r['hot_cached_per_s']:>13,.0f} {r['cold_per_s']:>10,.0f}"
            f" {r['uncached_walk_per_s']:>10,.0f} {r['trie_per_s']:>10,.0f}"
        )
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"repeats": REPEATS, "median": rows}, indent=2))


if __name__ == "__main__":
    main()
