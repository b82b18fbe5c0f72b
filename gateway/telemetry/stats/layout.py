"""The stats segment's bytes: header words, process and ring blocks, peer and resource slots.

Every process has a block of PROCESS_BLOCK_WORDS words; what lies where in it is that kind
of process's `BlockLayout` (`block_layout(role)`): the COUNTERS every process keeps, then
NAT words in the crypto process's block, DROPS in a block of a process that forwards packets
and DNS counters in the DNS process's (at the words where the others count drops: it
forwards none), and IDENTITY last. Sections of one layout never overlap (checked at import).
"""

from __future__ import annotations

import itertools
import struct
from dataclasses import dataclass

from gateway import topology
from gateway.wireguard.constants import KEY_SIZE
from gateway.wireguard.drops import Drop, DropLabel
from shm_ring.layout import RingStats as RingHeader

MAGIC = 0x46_5A_47_57_53_54_41_54  # "FZGWSTAT"
VERSION = 6  # 6: the DNS process's block only when a DNS server runs (HEADER_DNS)
HEADER_WORDS = 16
HEADER_LISTEN_PORT = 5  # header word holding the UDP port the gateway listens on
HEADER_MTU = 6  # header word holding the TUN device's MTU as the supervisor last saw it
HEADER_DNS = 7  # header word: 1 if the segment has a block for the DNS process, else 0
HEADER_PUBLIC_KEY = 8  # first of the 4 header words holding the interface's public key
HEADER_TRANSPORT = 12  # header word: the crypto process's per-packet path (TRANSPORT_BACKENDS)
# Its values: 0 before the crypto process started; gateway/dataplane/transport.py's names.
TRANSPORT_BACKENDS = ("", "python", "native")
PROCESS_BLOCK_WORDS = 64  # 512 bytes: writers never share a cache line
RING_BLOCK_WORDS = 8  # words per ring's block (not the ring's slots: dataplane/rings.py)
MAX_PEERS_LIMIT = 1 << 20
MAX_WORKERS = 256  # the TUN multi-queue limit
MAX_RESOURCES = 1024  # resource slots; more resources still work, without their metrics
HEADER = struct.Struct("=5Q")  # magic, version, workers, max_peers, created wall ns
HEADER_FLAG = struct.Struct("=Q")  # one header word (HEADER_DNS)

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


@dataclass(frozen=True, slots=True)
class Section:
    """Consecutive words of a process block, one per name (a gauge holds a value now, the
    others count up)."""

    base: int
    names: tuple[str, ...]
    gauges: frozenset[str] = frozenset()

    @property
    def end(self) -> int:
        return self.base + len(self.names)


COUNTERS = Section(0, COUNTER_NAMES)  # every process's, summed at scrape time
NAT = Section(NAT_BASE, NAT_COUNTER_NAMES, NAT_GAUGES)
DROPS = Section(DROP_BASE, DROP_REASONS)
DNS = Section(DNS_BASE, DNS_COUNTER_NAMES, DNS_GAUGES)
IDENTITY = Section(PID, ("pid", "started_mono_ns", "busy_at_start"))


@dataclass(frozen=True, slots=True)
class BlockLayout:
    """What one kind of process keeps in its block."""

    nat: Section | None = None
    drops: Section | None = DROPS
    dns: Section | None = None

    @property
    def sections(self) -> tuple[Section, ...]:
        extra = (s for s in (self.nat, self.drops, self.dns) if s is not None)
        return (COUNTERS, *extra, IDENTITY)


FORWARDER = BlockLayout()  # the supervisor, the workers and the UDP process
CRYPTO = BlockLayout(nat=NAT)
DNS_SERVER = BlockLayout(drops=None, dns=DNS)


def block_layout(role: str) -> BlockLayout:
    if role == topology.CRYPTO:
        return CRYPTO
    return DNS_SERVER if role == topology.DNS else FORWARDER


def _check(layout: BlockLayout) -> None:
    sections = sorted(layout.sections, key=lambda s: s.base)
    for below, above in itertools.pairwise(sections):
        if below.end > above.base:
            raise RuntimeError(f"stats layout: {below.names[0]}.. overlaps {above.names[0]}..")
    if sections[-1].end > PROCESS_BLOCK_WORDS:
        raise RuntimeError("stats layout: a section ends past the process block")


for _layout in (FORWARDER, CRYPTO, DNS_SERVER):
    _check(_layout)


def copy_ring_counters(block: memoryview, ring: RingHeader) -> None:
    """The supervisor's once-a-second copy of a ring's own counters into its ring block
    (the wake-up counts let bench_profile show eventfd writes per ring)."""
    block[RING_FULL_EVENTS] = ring.full_events
    block[RING_OCCUPANCY] = ring.occupancy
    block[RING_CAPACITY] = ring.slots
    block[RING_PACKETS] = ring.packets
    block[RING_CONSUMER_WAKEUPS] = ring.consumer_wakeups
    block[RING_PRODUCER_WAKEUPS] = ring.producer_wakeups
