"""The per-peer and per-resource slot tables, each slot guarded by a seqlock."""

from __future__ import annotations

import collections
import itertools
from collections.abc import Iterator

from gateway.telemetry.stats.layout import (
    PEER_ENDPOINT_BYTES,
    PEER_ENDPOINT_LEN,
    PEER_ENDPOINT_OFFSET,
    PEER_GENERATION,
    PEER_IN_USE,
    PEER_KEY_BYTES,
    PEER_KEY_OFFSET,
    PEER_LAST_HANDSHAKE_NS,
    PEER_RX_BYTES,
    PEER_RX_PACKETS,
    PEER_SLOT_WORDS,
    PEER_TX_BYTES,
    PEER_TX_PACKETS,
    RESOURCE_ALLOWED_BYTES,
    RESOURCE_ALLOWED_PACKETS,
    RESOURCE_DENIED_PACKETS,
    RESOURCE_GENERATION,
    RESOURCE_IN_USE,
    RESOURCE_NAME_BYTES,
    RESOURCE_NAME_LEN,
    RESOURCE_NAME_OFFSET,
    RESOURCE_SLOT_WORDS,
)
from gateway.telemetry.stats.snapshot import PeerAggregate, PeerStats, ResourceStats

_SEQLOCK_RETRIES = 100


class PeerTable:
    """The per-peer slots. Only the crypto process calls the mutating methods."""

    def __init__(self, words: memoryview, raw: memoryview, max_peers: int) -> None:
        self.words = words  # hot loop: words[slot * PEER_SLOT_WORDS + PEER_RX_BYTES] += n
        self._raw = raw
        self.max_peers = max_peers
        self._free = collections.deque(range(max_peers))

    def base(self, slot: int) -> int:
        """Word index of a slot; add PEER_* constants to it."""
        return slot * PEER_SLOT_WORDS

    def assign(self, public_key: bytes) -> int | None:
        """Give a peer a slot (counters zeroed); None when the table is full."""
        if len(public_key) != PEER_KEY_BYTES:
            raise ValueError(f"public key must be {PEER_KEY_BYTES} bytes, got {len(public_key)}")
        if not self._free:
            return None
        slot = self._free.popleft()
        base = self.base(slot)
        w = self.words
        w[base + PEER_GENERATION] += 1  # odd: readers skip the slot while it changes
        start = base * 8
        self._raw[start + 8 : start + PEER_SLOT_WORDS * 8] = bytes(PEER_SLOT_WORDS * 8 - 8)
        self._raw[start + PEER_KEY_OFFSET : start + PEER_ENDPOINT_OFFSET] = public_key
        w[base + PEER_IN_USE] = 1
        w[base + PEER_GENERATION] += 1
        return slot

    def adopt(self) -> dict[bytes, int]:
        """Take over the slots a previous crypto process left (after a restart): rebuilds
        the free list and returns public key -> slot, so counters continue."""
        owned: dict[bytes, int] = {}
        free = []
        for slot in range(self.max_peers):
            base = self.base(slot)
            if self.words[base + PEER_IN_USE]:
                start = base * 8
                key = bytes(self._raw[start + PEER_KEY_OFFSET : start + PEER_ENDPOINT_OFFSET])
                owned[key] = slot
            else:
                free.append(slot)
        self._free = collections.deque(free)
        return owned

    def release(self, slot: int) -> None:
        base = self.base(slot)
        if not self.words[base + PEER_IN_USE]:
            raise ValueError(f"peer slot {slot} is not in use")
        self.words[base + PEER_GENERATION] += 1
        self.words[base + PEER_IN_USE] = 0
        self.words[base + PEER_GENERATION] += 1
        self._free.append(slot)

    def set_endpoint(self, slot: int, endpoint: str) -> None:
        """Record the peer's endpoint text (e.g. '[2001:db8::1]:51820'), cut to 64 bytes."""
        data = endpoint.encode()[:PEER_ENDPOINT_BYTES]
        base = self.base(slot)
        start = base * 8 + PEER_ENDPOINT_OFFSET
        self.words[base + PEER_GENERATION] += 1
        self._raw[start : start + len(data)] = data
        self.words[base + PEER_ENDPOINT_LEN] = len(data)
        self.words[base + PEER_GENERATION] += 1

    def set_last_handshake(self, slot: int, wall_ns: int) -> None:
        self.words[self.base(slot) + PEER_LAST_HANDSHAKE_NS] = wall_ns

    def read(self) -> Iterator[PeerStats]:
        for slot in self._used_slots():
            peer = self._read_slot(slot)
            if peer is not None:
                yield peer

    def read_some(self, limit: int) -> tuple[list[PeerStats], PeerAggregate]:
        """The first `limit` peers by slot, and the sums over the others. The sums read
        whole columns of the table at C speed (a few ms at 100,000 peers), not slot by slot."""
        in_use = self.words[PEER_IN_USE::PEER_SLOT_WORDS].tolist()
        used = list(itertools.compress(range(len(in_use)), in_use))
        listed = used[:limit]
        peers = [p for p in map(self._read_slot, listed) if p is not None]
        cut = listed[-1] + 1 if listed else 0
        rest = in_use[cut:]

        def column(word: int) -> int:
            values = self.words[cut * PEER_SLOT_WORDS + word :: PEER_SLOT_WORDS].tolist()
            return sum(itertools.compress(values, rest))

        return peers, PeerAggregate(
            peers=len(used) - len(listed),
            rx_bytes=column(PEER_RX_BYTES),
            rx_packets=column(PEER_RX_PACKETS),
            tx_bytes=column(PEER_TX_BYTES),
            tx_packets=column(PEER_TX_PACKETS),
        )

    def count(self, handshake_since: float) -> tuple[int, int]:
        """(peers, peers whose latest handshake is at or after `handshake_since`, wall-clock
        seconds), from two columns of the table at C speed: no PeerStats per peer."""
        in_use = self.words[PEER_IN_USE::PEER_SLOT_WORDS].tolist()
        handshakes = self.words[PEER_LAST_HANDSHAKE_NS::PEER_SLOT_WORDS].tolist()
        used = list(itertools.compress(handshakes, in_use))
        return len(used), sum(map(int(handshake_since * 1e9).__le__, used))

    def _used_slots(self) -> Iterator[int]:
        in_use = self.words[PEER_IN_USE::PEER_SLOT_WORDS].tolist()
        return itertools.compress(range(len(in_use)), in_use)

    def _read_slot(self, slot: int) -> PeerStats | None:
        base = self.base(slot)
        w = self.words
        for _ in range(_SEQLOCK_RETRIES):
            gen = w[base + PEER_GENERATION]
            if gen & 1:
                continue
            if not w[base + PEER_IN_USE]:
                return None
            start = base * 8
            key = bytes(self._raw[start + PEER_KEY_OFFSET : start + PEER_ENDPOINT_OFFSET])
            length = min(w[base + PEER_ENDPOINT_LEN], PEER_ENDPOINT_BYTES)
            endpoint_at = start + PEER_ENDPOINT_OFFSET
            endpoint = bytes(self._raw[endpoint_at : endpoint_at + length])
            values = w[base + PEER_RX_BYTES : base + PEER_LAST_HANDSHAKE_NS + 1].tolist()
            if w[base + PEER_GENERATION] == gen:
                return PeerStats(
                    public_key=key,
                    endpoint=endpoint.decode(errors="replace"),
                    rx_bytes=values[0],
                    rx_packets=values[1],
                    tx_bytes=values[2],
                    tx_packets=values[3],
                    last_handshake=values[4] / 1e9,
                )
        return None  # the writer kept rewriting it; skipped for this scrape


class ResourceTable:
    """The per-resource slots, found by name. Only the crypto process calls the mutating
    methods; a restarted one finds the slots its predecessor filled, so counters continue."""

    def __init__(self, words: memoryview, raw: memoryview, max_resources: int) -> None:
        self.words = words
        self._raw = raw
        self.max_resources = max_resources

    def slot_for(self, name: str) -> int | None:
        """The slot counting `name`: the one already holding it, else a zeroed free one;
        None when the table is full."""
        data = name.encode()
        if len(data) > RESOURCE_NAME_BYTES:
            raise ValueError(f"resource name {name!r} longer than {RESOURCE_NAME_BYTES} bytes")
        free = None
        for slot in range(self.max_resources):
            if self.words[slot * RESOURCE_SLOT_WORDS + RESOURCE_IN_USE]:
                if self._name(slot) == data:
                    return slot
            elif free is None:
                free = slot
        if free is None:
            return None
        base = free * RESOURCE_SLOT_WORDS
        w = self.words
        w[base + RESOURCE_GENERATION] += 1
        start = base * 8
        self._raw[start + 8 : start + RESOURCE_SLOT_WORDS * 8] = bytes(RESOURCE_SLOT_WORDS * 8 - 8)
        name_at = start + RESOURCE_NAME_OFFSET
        self._raw[name_at : name_at + len(data)] = data
        w[base + RESOURCE_NAME_LEN] = len(data)
        w[base + RESOURCE_IN_USE] = 1
        w[base + RESOURCE_GENERATION] += 1
        return free

    def add(self, slot: int, allowed_packets: int, allowed_bytes: int, denied_packets: int) -> None:
        base = slot * RESOURCE_SLOT_WORDS
        w = self.words
        w[base + RESOURCE_ALLOWED_PACKETS] += allowed_packets
        w[base + RESOURCE_ALLOWED_BYTES] += allowed_bytes
        w[base + RESOURCE_DENIED_PACKETS] += denied_packets

    def release(self, slot: int) -> None:
        base = slot * RESOURCE_SLOT_WORDS
        self.words[base + RESOURCE_GENERATION] += 1
        self.words[base + RESOURCE_IN_USE] = 0
        self.words[base + RESOURCE_GENERATION] += 1

    def _name(self, slot: int) -> bytes:
        base = slot * RESOURCE_SLOT_WORDS
        length = min(self.words[base + RESOURCE_NAME_LEN], RESOURCE_NAME_BYTES)
        start = base * 8 + RESOURCE_NAME_OFFSET
        return bytes(self._raw[start : start + length])

    def read(self) -> Iterator[ResourceStats]:
        for slot in range(self.max_resources):
            base = slot * RESOURCE_SLOT_WORDS
            w = self.words
            for _ in range(_SEQLOCK_RETRIES):
                gen = w[base + RESOURCE_GENERATION]
                if gen & 1:
                    continue
                if not w[base + RESOURCE_IN_USE]:
                    break
                name = self._name(slot)
                values = w[base + RESOURCE_ALLOWED_PACKETS : base + RESOURCE_DENIED_PACKETS + 1]
                counts = values.tolist()
                if w[base + RESOURCE_GENERATION] == gen:
                    yield ResourceStats(name.decode(errors="replace"), *counts)
                    break
