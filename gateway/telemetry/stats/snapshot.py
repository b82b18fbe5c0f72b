"""What a reader of the stats segment gets: one consistent-enough copy of every counter."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields

from gateway import topology
from gateway.telemetry.stats.layout import COUNTER_NAMES


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
