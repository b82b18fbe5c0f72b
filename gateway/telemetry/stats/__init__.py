"""Counters in shared memory: one writer per counter, summed at scrape time, no locks.

Layout of the segment (all u64, native endianness, 8-byte aligned; `layout.py`):

    header     HEADER_WORDS words: magic, version, workers, max_peers, created wall ns,
               the UDP listen port and the TUN device's MTU (both written by the supervisor;
               `wg` and `ip link` can change them at run time), whether there is a DNS block,
               the interface's public key in words 8-11 (written by the crypto process;
               `wg set private-key` can change it), in word 12 the crypto process's
               per-packet path (TRANSPORT_BACKENDS)
    processes  one block of PROCESS_BLOCK_WORDS words per process: supervisor,
               worker0..N-1, crypto, udp, and dns only when a DNS server runs; what lies
               where in a block is its process's BlockLayout (`block_layout(role)`)
    rings      one block of RING_BLOCK_WORDS words per ring (2 per worker, plus
               crypto<->udp), copied by the supervisor from each ring's own counters once
               a second
    peers      max_peers slots of PEER_SLOT_WORDS words, all written by the crypto process
               (`tables.PeerTable`, a seqlock per slot)
    resources  max_resources slots of RESOURCE_SLOT_WORDS words (the policy's per-resource
               counters, by name), all written by the crypto process (`tables.ResourceTable`)

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

from gateway.telemetry.stats.layout import *  # noqa: F403 - callers write st.UDP_RX_PACKETS
from gateway.telemetry.stats.region import SegmentHeader, StatsRegion, read_header
from gateway.telemetry.stats.snapshot import (
    PeerAggregate,
    PeerStats,
    ProcessStats,
    ResourceStats,
    RingCounters,
    StatsSnapshot,
    Totals,
)
from gateway.telemetry.stats.tables import PeerTable, ResourceTable

__all__ = [
    "PeerAggregate",
    "PeerStats",
    "PeerTable",
    "ProcessStats",
    "ResourceStats",
    "ResourceTable",
    "RingCounters",
    "SegmentHeader",
    "StatsRegion",
    "StatsSnapshot",
    "Totals",
    "read_header",
]
