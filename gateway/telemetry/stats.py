"""Counters in shared memory: one writer per counter, summed at scrape time, no locks.

Layout of the segment (all u64, native endianness, 8-byte aligned):

    header     HEADER_SLOTS words: magic, version, workers, max_peers, created wall ns,
               the UDP listen port and the TUN device's MTU (both written by the supervisor;
               `wg` and `ip link` can change them at run time), in word 7 the crypto
               process's per-packet path (TRANSPORT_BACKENDS),
               the interface's public key in words 8-11 (written by the crypto process;
               `wg set private-key` can change it)
    processes  one block of PROC_SLOTS words per process: supervisor, worker0..N-1, crypto, udp,
               dns (its drop words hold DNS_COUNTER_NAMES instead: it forwards no packets);
               the crypto process's words NAT_BASE.. hold NAT_COUNTER_NAMES
    rings      one block of RING_SLOTS words per ring (2 per worker, plus crypto<->udp),
               copied by the supervisor from each ring's own counters once a second
    peers      max_peers slots of PEER_SLOT_WORDS words, all written by the crypto process
    resources  max_resources slots of RESOURCE_SLOT_WORDS words (the policy's per-resource
               counters, by name), all written by the crypto process

A process writes only its own block (hot loop: `c = region.process_block("crypto")` once,
then `c[UDP_RX_PACKETS] += n`), so no counter has two writers and a scrape never takes a
lock or stalls the data plane. Each block is 512 bytes, so writers never share a cache
line. The supervisor owns the segment: a file in the gateway's private runtime directory
(`gateway.telemetry.runtime_dir`, /run/firezone-gw/ by default), created before forking
(children use the same mapping) and unlinked at exit; after a crash it is replaced at the
next start of the same pid and ignored by `show` meanwhile (its supervisor is gone).
`firezone-gw show` attaches read-only by name, and `read_header` checks every header field
and the file's size before anything else of the file is trusted.
"""

from __future__ import annotations

import collections
import itertools
import mmap
import os
import struct
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Self

import psutil

from gateway import topology
from gateway.telemetry import runtime_dir
from gateway.topology import ring_names, stats_roles
from gateway.wireguard.constants import KEY_SIZE
from gateway.wireguard.drops import Drop, DropLabel
from shm_ring.layout import RingStats as RingHeader

MAGIC = 0x46_5A_47_57_53_54_41_54  # "FZGWSTAT"
VERSION = 5
HEADER_SLOTS = 16
HEADER_LISTEN_PORT = 5  # header word holding the UDP port the gateway listens on
HEADER_MTU = 6  # header word holding the TUN device's MTU as the supervisor last saw it
HEADER_TRANSPORT = 7  # header word: the crypto process's per-packet path (TRANSPORT_BACKENDS)
# Its values: 0 before the crypto process started; gateway/dataplane/transport.py's names.
TRANSPORT_BACKENDS = ("", "python", "native")
HEADER_PUBLIC_KEY = 8  # first of the 4 header words holding the interface's public key
PROC_SLOTS = 64
RING_SLOTS = 8
MAX_PEERS_LIMIT = 1 << 20
MAX_WORKERS = 256  # the TUN multi-queue limit
MAX_RESOURCES = 1024  # resource slots; more resources still work, without their metrics
_HEADER = struct.Struct("=5Q")  # magic, version, workers, max_peers, created wall ns

# --- process block: counters (summed over all processes at scrape time) ---
UDP_RX_PACKETS = 0  # datagrams received on the UDP socket(s)
UDP_RX_BYTES = 1
UDP_TX_PACKETS = 2  # datagrams sent (each GSO segment counts once)
UDP_TX_BYTES = 3
TUN_RX_PACKETS = 4  # IP packets read from the TUN device (towards peers)
TUN_RX_BYTES = 5
TUN_TX_PACKETS = 6  # IP packets written to the TUN device (from peers)
TUN_TX_BYTES = 7
HANDSHAKES_INITIATED = 8  # initiations we sent
HANDSHAKES_COMPLETED = 9  # sessions established (either side)
HANDSHAKES_REJECTED = 10  # initiations/responses that failed validation
COOKIE_REPLIES_SENT = 11
GSO_BATCHES = 12  # sendmsg calls carrying UDP_SEGMENT
GSO_SEGMENTS = 13  # datagrams in those batches (average = segments / batches)
CHILD_RESTARTS = 14  # written by the supervisor
PEER_TABLE_FULL = 15  # peers the crypto process could not give a stats slot
BUSY_NS = 16  # time spent working (not waiting in epoll), for the busy fraction
ICMP_ERRORS_SENT = 17  # ICMP errors the gateway generated for peers (policy)
ICMP_ERRORS_RATE_LIMITED = 18  # ICMP errors not sent: the peer's rate limit was spent
UDP_SOURCE_FALLBACKS = 19  # sent without the sticky source address the kernel refused

COUNTER_NAMES: tuple[str, ...] = (
    "udp_rx_packets",
    "udp_rx_bytes",
    "udp_tx_packets",
    "udp_tx_bytes",
    "tun_rx_packets",
    "tun_rx_bytes",
    "tun_tx_packets",
    "tun_tx_bytes",
    "handshakes_initiated",
    "handshakes_completed",
    "handshakes_rejected",
    "cookie_replies_sent",
    "gso_batches",
    "gso_segments",
    "child_restarts",
    "peer_table_full",
    "busy_ns",
    "icmp_errors_sent",
    "icmp_errors_rate_limited",
    "udp_source_fallbacks",
)

# --- process block: drops by reason ---
DROP_BASE = 30  # after COUNTER_NAMES (20) and the crypto block's NAT words (9)
# One slot per metric label, in DropLabel's order (the core owns the list).
DROP_REASONS: tuple[str, ...] = tuple(DropLabel)


def drop_slot(label: DropLabel) -> int:
    return DROP_BASE + DROP_REASONS.index(label)


DROP_MALFORMED = drop_slot(DropLabel.MALFORMED)
DROP_MAC1_INVALID = drop_slot(DropLabel.MAC1_INVALID)
DROP_COOKIE_REQUIRED = drop_slot(DropLabel.COOKIE_REQUIRED)
DROP_RATE_LIMITED = drop_slot(DropLabel.RATE_LIMITED)
DROP_UNKNOWN_RECEIVER = drop_slot(DropLabel.UNKNOWN_RECEIVER)
DROP_DECRYPT_FAILED = drop_slot(DropLabel.DECRYPT_FAILED)
DROP_REPLAY = drop_slot(DropLabel.REPLAY)
DROP_NO_SESSION = drop_slot(DropLabel.NO_SESSION)
DROP_ALLOWED_IPS = drop_slot(DropLabel.ALLOWED_IPS)
DROP_NO_ROUTE = drop_slot(DropLabel.NO_ROUTE)
DROP_POLICY = drop_slot(DropLabel.POLICY)
DROP_RING_FULL = drop_slot(DropLabel.RING_FULL)
DROP_TOO_BIG = drop_slot(DropLabel.TOO_BIG)
DROP_TUN_WRITE_FAILED = drop_slot(DropLabel.TUN_WRITE_FAILED)
DROP_UDP_SEND_FAILED = drop_slot(DropLabel.UDP_SEND_FAILED)
DROP_ROUTING_HEADER = drop_slot(DropLabel.ROUTING_HEADER)
# Where the crypto process adds each of the core's drop counts.
CORE_DROP_SLOTS: dict[Drop, int] = {reason: drop_slot(reason.label) for reason in Drop}

# --- the crypto process's block: NAT of DNS resources (gateway/nat/handler.py summary) ---
NAT_BASE = len(COUNTER_NAMES)  # the words between the counters and the drops
NAT_COUNTER_NAMES: tuple[str, ...] = (
    "translated_out",  # peer -> real host
    "translated_in",  # reply -> peer
    "icmp_errors_translated",
    "refused",  # answered with ICMP unreachable/prohibited (or rate-limited)
    "dropped",  # fragments, untranslatable replies, bad mappings
    "expired",  # NAT entries
    "entries",  # a gauge: NAT entries now
    "evicted",  # unanswered entries removed to make room (a peer's quota, or a full table)
    "refused_no_room",  # of `refused`: no entry to evict (all answered) or no free port
)
NAT_GAUGES = frozenset({"entries"})

# --- the dns process's block: DNS counters where the others count drops ---
DNS_BASE = DROP_BASE
DNS_COUNTER_NAMES: tuple[str, ...] = (
    "queries",
    "forwarded",
    "answered",
    "servfail_timeout",
    "servfail_overload",
    "servfail_no_upstream",
    "formerr",
    "notimp",
    "dropped_malformed",
    "unmatched_responses",
    "resource_queries",
    "resource_answers",
    "resource_unresolved",
    "proxy_mappings",
    "proxy_mapping_unacknowledged",
    "in_flight",  # a gauge: queries waiting for an upstream now
    "servfail_client_quota",  # one client (peer) over its share of in-flight queries
    "truncated",  # answers cut to the UDP client's size (TC)
    "dropped_not_peer",  # queries from no peer's address, or not through the tunnel
    "mappings_let_go",  # a peer over its bound of mappings let go of its oldest
    "mappings_freed",  # mappings nobody holds or asked for in a long time
)
DNS_GAUGES = frozenset({"in_flight"})

# --- process block: identity (written by the process itself in attach_process) ---
PID = 56
STARTED_MONO_NS = 57  # time.monotonic_ns() at attach (CLOCK_MONOTONIC is system-wide)
BUSY_AT_START = 58  # BUSY_NS at attach: a restarted child keeps adding to the same block

# --- ring block: all written by the supervisor once a second, copied from the ring's own
# header (shm_ring.Ring.stats()), so the ring's producer and consumer never touch it ---
RING_FULL_EVENTS = 0  # sends that found the ring full, ever
RING_OCCUPANCY = 1  # packets waiting at the last copy
RING_CAPACITY = 2  # slots
RING_PACKETS = 3  # messages published, ever
RING_CONSUMER_WAKEUPS = 4  # eventfd writes that woke the consumer, ever
RING_PRODUCER_WAKEUPS = 5  # eventfd writes that woke the producer, ever

# --- peer slot (words); all written by the crypto process ---
PEER_GENERATION = 0  # odd while the key/endpoint are being rewritten (seqlock)
PEER_RX_BYTES = 1  # transport data received from the peer (decrypted payload bytes)
PEER_RX_PACKETS = 2
PEER_TX_BYTES = 3
PEER_TX_PACKETS = 4
PEER_LAST_HANDSHAKE_NS = 5  # wall clock (time.time_ns()), 0 = never
PEER_ENDPOINT_LEN = 6
PEER_IN_USE = 7
PEER_KEY_OFFSET = 8 * 8  # bytes within the slot
PEER_KEY_BYTES = KEY_SIZE
PEER_ENDPOINT_OFFSET = PEER_KEY_OFFSET + PEER_KEY_BYTES
PEER_ENDPOINT_BYTES = 64
PEER_SLOT_WORDS = (PEER_ENDPOINT_OFFSET + PEER_ENDPOINT_BYTES) // 8

# --- resource slot (words); all written by the crypto process ---
RESOURCE_GENERATION = 0  # odd while the name is being rewritten (seqlock)
RESOURCE_IN_USE = 1
RESOURCE_ALLOWED_PACKETS = 2  # both directions
RESOURCE_ALLOWED_BYTES = 3
RESOURCE_DENIED_PACKETS = 4
RESOURCE_NAME_LEN = 5
RESOURCE_NAME_OFFSET = 6 * 8  # bytes within the slot
RESOURCE_NAME_BYTES = 64 * 4  # a name is at most 64 characters of UTF-8
RESOURCE_SLOT_WORDS = (RESOURCE_NAME_OFFSET + RESOURCE_NAME_BYTES) // 8

BUSY_WINDOW_SECONDS = 10.0
_SEQLOCK_RETRIES = 100

if (
    len(COUNTER_NAMES) > DROP_BASE
    or DROP_BASE + len(DROP_REASONS) > PID
    or DNS_BASE + len(DNS_COUNTER_NAMES) > PID
    or NAT_BASE + len(NAT_COUNTER_NAMES) > DROP_BASE
):
    raise RuntimeError("stats layout: counter ranges overlap")


def copy_ring_counters(block: memoryview, ring: RingHeader) -> None:
    """The supervisor's once-a-second copy of a ring's own counters into its ring block
    (the wake-up counts let bench_profile show eventfd writes per ring)."""
    block[RING_FULL_EVENTS] = ring.full_events
    block[RING_OCCUPANCY] = ring.occupancy
    block[RING_CAPACITY] = ring.slots
    block[RING_PACKETS] = ring.packets
    block[RING_CONSUMER_WAKEUPS] = ring.consumer_wakeups
    block[RING_PRODUCER_WAKEUPS] = ring.producer_wakeups


@dataclass(frozen=True, slots=True)
class Totals:
    """Counters summed over every process (field order = COUNTER_NAMES)."""

    udp_rx_packets: int
    udp_rx_bytes: int
    udp_tx_packets: int
    udp_tx_bytes: int
    tun_rx_packets: int
    tun_rx_bytes: int
    tun_tx_packets: int
    tun_tx_bytes: int
    handshakes_initiated: int
    handshakes_completed: int
    handshakes_rejected: int
    cookie_replies_sent: int
    gso_batches: int
    gso_segments: int
    child_restarts: int
    peer_table_full: int
    busy_ns: int
    icmp_errors_sent: int
    icmp_errors_rate_limited: int
    udp_source_fallbacks: int

    @property
    def gso_average_segments(self) -> float:
        return self.gso_segments / self.gso_batches if self.gso_batches else 0.0


if tuple(f.name for f in fields(Totals)) != COUNTER_NAMES:
    raise RuntimeError("stats layout: Totals fields differ from COUNTER_NAMES")


@dataclass(frozen=True, slots=True)
class ProcessStats:
    role: str
    pid: int  # 0 until the process attached
    counters: Totals
    drops: Mapping[str, int]
    busy_fraction: float | None  # share of wall time spent working over the last seconds
    cpu_seconds: float | None  # user + system, from psutil; None if not sampled or gone
    rss_bytes: int | None


@dataclass(frozen=True, slots=True)
class RingCounters:
    name: str
    capacity: int
    occupancy: int
    full_events: int


@dataclass(frozen=True, slots=True)
class PeerStats:
    public_key: bytes
    endpoint: str  # "" when unknown
    rx_bytes: int
    rx_packets: int
    tx_bytes: int
    tx_packets: int
    last_handshake: float  # wall-clock seconds since the epoch, 0.0 = never


@dataclass(frozen=True, slots=True)
class ResourceStats:
    name: str
    allowed_packets: int
    allowed_bytes: int
    denied_packets: int


@dataclass(frozen=True, slots=True)
class PeerAggregate:
    """Sums over the peers a snapshot does not list one by one (beyond its peer limit)."""

    peers: int = 0
    rx_bytes: int = 0
    rx_packets: int = 0
    tx_bytes: int = 0
    tx_packets: int = 0


@dataclass(frozen=True, slots=True)
class StatsSnapshot:
    taken_at: float  # wall-clock seconds
    workers: int
    max_peers: int
    mtu: int  # of the TUN device; 0 = not known yet
    transport: str  # the per-packet path, "native" or "python" ("" = not started yet)
    totals: Totals
    drops: Mapping[str, int]  # summed over processes, every reason present
    processes: tuple[ProcessStats, ...]
    rings: tuple[RingCounters, ...]
    peers: tuple[PeerStats, ...]  # all, or the first `peer_limit` by slot
    aggregated: PeerAggregate = PeerAggregate()  # the peers beyond the limit
    resources: tuple[ResourceStats, ...] = ()
    dns: Mapping[str, int] = field(default_factory=dict)  # DNS_COUNTER_NAMES; empty: no DNS
    nat: Mapping[str, int] = field(default_factory=dict)  # NAT_COUNTER_NAMES (crypto's block)

    def process(self, role: str) -> ProcessStats:
        for proc in self.processes:
            if proc.role == role:
                return proc
        raise KeyError(role)

    @property
    def crypto_busy_fraction(self) -> float | None:
        return self.process(topology.CRYPTO).busy_fraction


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


class StatsRegion:
    """The shared-memory stats segment. Create in the supervisor before forking."""

    def __init__(self, mm: mmap.mmap, name: str, directory: Path, *, owner: bool) -> None:
        self._mm = mm
        self._name = name
        self._directory = directory
        self._owner = owner
        self._views: list[memoryview] = []
        self._blocks: dict[str, memoryview] = {}  # handed-out views, one per block
        buf = self._view(memoryview(mm))
        words = self._view(buf.cast("Q"))
        self.workers = int(words[2])
        self.max_peers = int(words[3])
        self.max_resources = MAX_RESOURCES
        self.roles = stats_roles(self.workers)
        self.ring_names = ring_names(self.workers)
        self._words = words
        key_at = HEADER_PUBLIC_KEY * 8
        self._public_key = self._view(buf[key_at : key_at + 32])
        self._proc_base = HEADER_SLOTS
        self._ring_base = self._proc_base + len(self.roles) * PROC_SLOTS
        self._peer_base = self._ring_base + len(self.ring_names) * RING_SLOTS
        peer_end = self._peer_base + self.max_peers * PEER_SLOT_WORDS
        self.peers = PeerTable(
            self._view(words[self._peer_base : peer_end]),
            self._view(buf[self._peer_base * 8 : peer_end * 8]),
            self.max_peers,
        )
        resource_end = peer_end + self.max_resources * RESOURCE_SLOT_WORDS
        self.resources = ResourceTable(
            self._view(words[peer_end:resource_end]),
            self._view(buf[peer_end * 8 : resource_end * 8]),
            self.max_resources,
        )
        self._busy_samples: collections.deque[tuple[int, tuple[int, ...]]] = collections.deque(
            maxlen=256
        )
        self._psutil: dict[int, psutil.Process] = {}

    @staticmethod
    def size_for(workers: int, max_peers: int) -> int:
        roles = len(stats_roles(workers))
        rings = len(ring_names(workers))
        words = HEADER_SLOTS + roles * PROC_SLOTS + rings * RING_SLOTS
        words += MAX_RESOURCES * RESOURCE_SLOT_WORDS
        return (words + max_peers * PEER_SLOT_WORDS) * 8

    @classmethod
    def create(
        cls, name: str, *, workers: int, max_peers: int = 1024, directory: Path | None = None
    ) -> Self:
        """Create the segment file `name` in the runtime directory (made if missing)."""
        if not 1 <= workers <= MAX_WORKERS:
            raise ValueError(f"workers must be 1..{MAX_WORKERS}, got {workers}")
        if not 1 <= max_peers <= MAX_PEERS_LIMIT:
            raise ValueError(f"max_peers must be 1..{MAX_PEERS_LIMIT}, got {max_peers}")
        _check_name(name)
        directory = directory or runtime_dir.runtime_dir()
        size = cls.size_for(workers, max_peers)
        dir_fd = runtime_dir.make_dir(directory)
        try:
            fd = runtime_dir.create_file(dir_fd, name, size)
        finally:
            os.close(dir_fd)
        try:
            mm = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        _HEADER.pack_into(mm, 0, MAGIC, VERSION, workers, max_peers, time.time_ns())
        return cls(mm, name, directory, owner=True)

    @classmethod
    def attach(cls, name: str, directory: Path | None = None) -> Self:
        """Map an existing segment read-only (e.g. for `firezone-gw show`); close() leaves it.

        Raises OSError for a path that is not a regular file of the directory's owner (never
        blocking on a fifo) and ValueError for a file whose header or size is not a segment's.
        """
        _check_name(name)
        directory = directory or runtime_dir.runtime_dir()
        dir_fd, owner = runtime_dir.open_dir(directory)
        try:
            fd, size = runtime_dir.open_file(dir_fd, name, owner)
        finally:
            os.close(dir_fd)
        try:
            read_header(fd, size, name)
            mm = mmap.mmap(fd, size, prot=mmap.PROT_READ)
        finally:
            os.close(fd)
        return cls(mm, name, directory, owner=False)

    @property
    def name(self) -> str:
        return self._name

    @property
    def path(self) -> Path:
        return self._directory / self._name

    @property
    def listen_port(self) -> int:
        """The UDP port the gateway listens on now (0 until the supervisor set it)."""
        return int(self._words[HEADER_LISTEN_PORT])

    @listen_port.setter
    def listen_port(self, port: int) -> None:
        self._words[HEADER_LISTEN_PORT] = port

    @property
    def mtu(self) -> int:
        """The TUN device's MTU now (0 until the supervisor set it)."""
        return int(self._words[HEADER_MTU])

    @mtu.setter
    def mtu(self, mtu: int) -> None:
        self._words[HEADER_MTU] = mtu

    @property
    def transport(self) -> str:
        """The crypto process's per-packet path ("" until it started)."""
        value = int(self._words[HEADER_TRANSPORT])
        return TRANSPORT_BACKENDS[value] if value < len(TRANSPORT_BACKENDS) else ""

    @transport.setter
    def transport(self, name: str) -> None:
        self._words[HEADER_TRANSPORT] = TRANSPORT_BACKENDS.index(name)

    @property
    def public_key(self) -> bytes | None:
        """The interface's public key as the crypto process last wrote it; None if unset."""
        key = bytes(self._public_key)
        return key if any(key) else None

    @public_key.setter
    def public_key(self, key: bytes | None) -> None:
        self._public_key[:] = key if key is not None else bytes(32)

    def process_block(self, role: str) -> memoryview:
        """The u64 counters of one process ('supervisor', 'worker0', 'crypto', 'udp')."""
        if role not in self._blocks:
            start = self._proc_base + self.roles.index(role) * PROC_SLOTS
            self._blocks[role] = self._view(self._words[start : start + PROC_SLOTS])
        return self._blocks[role]

    def attach_process(self, role: str) -> memoryview:
        """Call in the process that owns `role` (after fork): records its pid and start."""
        block = self.process_block(role)
        block[PID] = os.getpid()
        block[BUSY_AT_START] = block[BUSY_NS]
        block[STARTED_MONO_NS] = time.monotonic_ns()
        return block

    def ring_block(self, ring: str) -> memoryview:
        key = f"ring:{ring}"
        if key not in self._blocks:
            start = self._ring_base + self.ring_names.index(ring) * RING_SLOTS
            self._blocks[key] = self._view(self._words[start : start + RING_SLOTS])
        return self._blocks[key]

    def sample_busy(self, now_ns: int | None = None) -> None:
        """Remember every process's busy time; call about once a second (e.g. from the
        supervisor's watchdog tick) so the busy fraction covers the last few seconds."""
        now = time.monotonic_ns() if now_ns is None else now_ns
        self._busy_samples.append((now, self._busy_values()))

    def snapshot(
        self,
        *,
        sample_processes: bool = True,
        now_ns: int | None = None,
        peer_limit: int | None = None,
    ) -> StatsSnapshot:
        """Every counter; the peers one by one (at most `peer_limit` of them, the first by
        slot, the rest summed in `aggregated`)."""
        now = time.monotonic_ns() if now_ns is None else now_ns
        busy_now = self._busy_values()
        reference = self._busy_reference(now)
        processes: list[ProcessStats] = []
        dns: dict[str, int] = {}
        nat: dict[str, int] = {}
        sums = [0] * len(COUNTER_NAMES)
        drop_sums = [0] * len(DROP_REASONS)
        for index, role in enumerate(self.roles):
            start = self._proc_base + index * PROC_SLOTS
            values = self._words[start : start + PROC_SLOTS].tolist()
            counters = values[: len(COUNTER_NAMES)]
            if role == topology.CRYPTO:
                nat = dict(zip(NAT_COUNTER_NAMES, values[NAT_BASE:], strict=False))
            if role == topology.DNS:
                if values[PID]:  # a DNS server ran
                    dns = dict(zip(DNS_COUNTER_NAMES, values[DNS_BASE:], strict=False))
                values[DROP_BASE : DROP_BASE + len(DROP_REASONS)] = [0] * len(DROP_REASONS)
            drops = values[DROP_BASE : DROP_BASE + len(DROP_REASONS)]
            sums = [a + b for a, b in zip(sums, counters, strict=True)]
            drop_sums = [a + b for a, b in zip(drop_sums, drops, strict=True)]
            pid = int(values[PID])
            cpu, rss = self._sample_process(pid) if sample_processes else (None, None)
            processes.append(
                ProcessStats(
                    role=role,
                    pid=pid,
                    counters=Totals(*counters),
                    drops=dict(zip(DROP_REASONS, drops, strict=True)),
                    busy_fraction=_busy_fraction(
                        now,
                        busy_now[index],
                        reference,
                        index,
                        (int(values[STARTED_MONO_NS]), int(values[BUSY_AT_START])),
                    ),
                    cpu_seconds=cpu,
                    rss_bytes=rss,
                )
            )
        rings = []
        for index, ring in enumerate(self.ring_names):
            start = self._ring_base + index * RING_SLOTS
            full, occupancy, capacity = self._words[start : start + 3].tolist()
            rings.append(RingCounters(ring, capacity, occupancy, full))
        if peer_limit is None:
            peers, aggregated = list(self.peers.read()), PeerAggregate()
        else:
            peers, aggregated = self.peers.read_some(peer_limit)
        return StatsSnapshot(
            taken_at=time.time(),
            workers=self.workers,
            max_peers=self.max_peers,
            mtu=self.mtu,
            transport=self.transport,
            totals=Totals(*sums),
            drops=dict(zip(DROP_REASONS, drop_sums, strict=True)),
            processes=tuple(processes),
            rings=tuple(rings),
            peers=tuple(peers),
            aggregated=aggregated,
            resources=tuple(self.resources.read()),
            dns=dns,
            nat=nat,
        )

    def close(self) -> None:
        """Drop this process's mapping. Views handed out become unusable."""
        self._release_views()
        self._mm.close()

    def unlink(self) -> None:
        """Remove the segment file (supervisor only, at exit)."""
        if not self._owner:
            raise RuntimeError("only the process that created the stats region may unlink it")
        dir_fd = runtime_dir.make_dir(self._directory)
        try:
            os.unlink(self._name, dir_fd=dir_fd)
        finally:
            os.close(dir_fd)

    def _view(self, view: memoryview) -> memoryview:
        self._views.append(view)
        return view

    def _release_views(self) -> None:
        self._blocks.clear()
        for view in reversed(self._views):
            view.release()
        self._views.clear()

    def _busy_values(self) -> tuple[int, ...]:
        base = self._proc_base + BUSY_NS
        return tuple(self._words[base + i * PROC_SLOTS] for i in range(len(self.roles)))

    def _busy_reference(self, now: int) -> tuple[int, tuple[int, ...]] | None:
        """The newest sample at least BUSY_WINDOW_SECONDS old, else the oldest one."""
        window_start = now - int(BUSY_WINDOW_SECONDS * 1e9)
        chosen = None
        for sample in self._busy_samples:
            if sample[0] >= now:
                break
            if chosen is None or sample[0] <= window_start:
                chosen = sample
        return chosen

    def _sample_process(self, pid: int) -> tuple[float | None, int | None]:
        if pid == 0:
            return None, None
        try:
            proc = self._psutil.get(pid) or psutil.Process(pid)
            self._psutil[pid] = proc
            with proc.oneshot():
                times = proc.cpu_times()
                rss = int(proc.memory_info().rss)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            self._psutil.pop(pid, None)
            return None, None
        return float(times.user + times.system), rss


def _check_name(name: str) -> None:
    if not name or "/" in name or "\0" in name or name in {".", ".."}:
        raise ValueError(f"stats segment name must be a plain file name, got {name!r}")


@dataclass(frozen=True, slots=True)
class SegmentHeader:
    workers: int
    max_peers: int
    created_ns: int  # wall clock, when the supervisor created the segment


def read_header(fd: int, size: int, name: str) -> SegmentHeader:
    """The validated header of an open segment file of `size` bytes (the one reader of it).

    Raises ValueError naming the first field that is not a segment's, or a size that does
    not match what the header describes.
    """
    raw = os.pread(fd, _HEADER.size, 0)
    if len(raw) < _HEADER.size or size < HEADER_SLOTS * 8:
        raise ValueError(f"{name}: {size} bytes is too small for a firezone-gw stats segment")
    magic, version, workers, max_peers, created = _HEADER.unpack(raw)
    if magic != MAGIC:
        raise ValueError(f"{name} is not a firezone-gw stats segment (bad magic)")
    if version != VERSION:
        raise ValueError(f"{name}: stats segment version {version}, expected {VERSION}")
    if not 1 <= workers <= MAX_WORKERS:
        raise ValueError(f"{name}: {workers} workers in the header, expected 1..{MAX_WORKERS}")
    if not 1 <= max_peers <= MAX_PEERS_LIMIT:
        raise ValueError(f"{name}: {max_peers} peers in the header, expected 1..{MAX_PEERS_LIMIT}")
    expected = StatsRegion.size_for(workers, max_peers)
    if size != expected:
        raise ValueError(f"{name}: {size} bytes, but its header describes {expected}")
    return SegmentHeader(int(workers), int(max_peers), int(created))


def _busy_fraction(
    now: int,
    busy_now: int,
    reference: tuple[int, tuple[int, ...]] | None,
    index: int,
    start: tuple[int, int],
) -> float | None:
    started, busy_at_start = start
    if reference is not None and started and reference[0] >= started:
        since, busy_then = reference[0], reference[1][index]
    elif started:
        since, busy_then = started, busy_at_start
    else:
        return None  # the process never attached
    elapsed = now - since
    if elapsed <= 0:
        return None
    return min(1.0, max(0.0, (busy_now - busy_then) / elapsed))
