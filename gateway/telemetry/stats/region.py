"""The segment itself: created by the supervisor, attached by `show`, read as a snapshot."""

from __future__ import annotations

import mmap
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from gateway.telemetry import runtime_dir
from gateway.telemetry.stats.busy import BusySamples, ProcessSampler, busy_fraction
from gateway.telemetry.stats.layout import (
    BUSY_AT_START,
    BUSY_NS,
    COUNTER_NAMES,
    DROP_REASONS,
    HEADER,
    HEADER_DNS,
    HEADER_FLAG,
    HEADER_LISTEN_PORT,
    HEADER_MTU,
    HEADER_PUBLIC_KEY,
    HEADER_TRANSPORT,
    HEADER_WORDS,
    MAGIC,
    MAX_PEERS_LIMIT,
    MAX_RESOURCES,
    MAX_WORKERS,
    PEER_SLOT_WORDS,
    PID,
    PROCESS_BLOCK_WORDS,
    RESOURCE_SLOT_WORDS,
    RING_BLOCK_WORDS,
    STARTED_MONO_NS,
    TRANSPORT_BACKENDS,
    VERSION,
    Section,
    block_layout,
)
from gateway.telemetry.stats.snapshot import (
    PeerAggregate,
    ProcessStats,
    RingCounters,
    StatsSnapshot,
    Totals,
)
from gateway.telemetry.stats.tables import PeerTable, ResourceTable
from gateway.topology import ring_names, stats_roles


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
        self.roles = stats_roles(self.workers, dns=bool(words[HEADER_DNS]))
        self.ring_names = ring_names(self.workers)
        self._words = words
        key_at = HEADER_PUBLIC_KEY * 8
        self._public_key = self._view(buf[key_at : key_at + 32])
        self._proc_base = HEADER_WORDS
        self._ring_base = self._proc_base + len(self.roles) * PROCESS_BLOCK_WORDS
        self._peer_base = self._ring_base + len(self.ring_names) * RING_BLOCK_WORDS
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
        self._busy_samples = BusySamples()
        self._processes = ProcessSampler()

    @staticmethod
    def size_for(workers: int, max_peers: int, *, dns: bool) -> int:
        roles = len(stats_roles(workers, dns=dns))
        rings = len(ring_names(workers))
        words = HEADER_WORDS + roles * PROCESS_BLOCK_WORDS + rings * RING_BLOCK_WORDS
        words += MAX_RESOURCES * RESOURCE_SLOT_WORDS
        return (words + max_peers * PEER_SLOT_WORDS) * 8

    @classmethod
    def create(
        cls,
        name: str,
        *,
        workers: int,
        max_peers: int = 1024,
        dns: bool = False,
        directory: Path | None = None,
    ) -> Self:
        """Create the segment file `name` in the runtime directory (made if missing), with a
        block for the DNS process if `dns` (a DNS server runs)."""
        if not 1 <= workers <= MAX_WORKERS:
            raise ValueError(f"workers must be 1..{MAX_WORKERS}, got {workers}")
        if not 1 <= max_peers <= MAX_PEERS_LIMIT:
            raise ValueError(f"max_peers must be 1..{MAX_PEERS_LIMIT}, got {max_peers}")
        _check_name(name)
        directory = directory or runtime_dir.runtime_dir()
        size = cls.size_for(workers, max_peers, dns=dns)
        dir_fd = runtime_dir.make_dir(directory)
        try:
            fd = runtime_dir.create_file(dir_fd, name, size)
        finally:
            os.close(dir_fd)
        try:
            mm = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        HEADER.pack_into(mm, 0, MAGIC, VERSION, workers, max_peers, time.time_ns())
        HEADER_FLAG.pack_into(mm, HEADER_DNS * 8, int(dns))
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
            start = self._proc_base + self.roles.index(role) * PROCESS_BLOCK_WORDS
            self._blocks[role] = self._view(self._words[start : start + PROCESS_BLOCK_WORDS])
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
            start = self._ring_base + self.ring_names.index(ring) * RING_BLOCK_WORDS
            self._blocks[key] = self._view(self._words[start : start + RING_BLOCK_WORDS])
        return self._blocks[key]

    def sample_busy(self, now_ns: int | None = None) -> None:
        """Remember every process's busy time; call about once a second (e.g. from the
        supervisor's watchdog tick) so the busy fraction covers the last few seconds."""
        now = time.monotonic_ns() if now_ns is None else now_ns
        self._busy_samples.add(now, self._busy_values())

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
        reference = self._busy_samples.reference(now)
        processes: list[ProcessStats] = []
        dns: dict[str, int] = {}
        nat: dict[str, int] = {}
        sums = [0] * len(COUNTER_NAMES)
        drop_sums = [0] * len(DROP_REASONS)
        for index, role in enumerate(self.roles):
            start = self._proc_base + index * PROCESS_BLOCK_WORDS
            values = self._words[start : start + PROCESS_BLOCK_WORDS].tolist()
            counters = values[: len(COUNTER_NAMES)]
            layout = block_layout(role)
            if layout.nat is not None:
                nat = _section(layout.nat, values)
            if layout.dns is not None and values[PID]:  # a DNS server ran
                dns = _section(layout.dns, values)
            drops = [0] * len(DROP_REASONS)
            if layout.drops is not None:
                drops = values[layout.drops.base : layout.drops.end]
            sums = [a + b for a, b in zip(sums, counters, strict=True)]
            drop_sums = [a + b for a, b in zip(drop_sums, drops, strict=True)]
            pid = int(values[PID])
            cpu, rss = self._processes.sample(pid) if sample_processes else (None, None)
            processes.append(
                ProcessStats(
                    role=role,
                    pid=pid,
                    counters=Totals(*counters),
                    drops=dict(zip(DROP_REASONS, drops, strict=True)),
                    busy_fraction=busy_fraction(
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
            start = self._ring_base + index * RING_BLOCK_WORDS
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
        return tuple(self._words[base + i * PROCESS_BLOCK_WORDS] for i in range(len(self.roles)))


def _section(section: Section, values: list[int]) -> dict[str, int]:
    return dict(zip(section.names, values[section.base : section.end], strict=True))


def _check_name(name: str) -> None:
    if not name or "/" in name or "\0" in name or name in {".", ".."}:
        raise ValueError(f"stats segment name must be a plain file name, got {name!r}")


@dataclass(frozen=True, slots=True)
class SegmentHeader:
    workers: int
    max_peers: int
    created_ns: int  # wall clock, when the supervisor created the segment
    dns: bool  # the segment has a block for the DNS process


def read_header(fd: int, size: int, name: str) -> SegmentHeader:
    """The validated header of an open segment file of `size` bytes (the one reader of it).

    Raises ValueError naming the first field that is not a segment's, or a size that does
    not match what the header describes.
    """
    raw = os.pread(fd, HEADER.size, 0)
    if len(raw) < HEADER.size or size < HEADER_WORDS * 8:
        raise ValueError(f"{name}: {size} bytes is too small for a firezone-gw stats segment")
    magic, version, workers, max_peers, created = HEADER.unpack(raw)
    if magic != MAGIC:
        raise ValueError(f"{name} is not a firezone-gw stats segment (bad magic)")
    if version != VERSION:
        raise ValueError(f"{name}: stats segment version {version}, expected {VERSION}")
    if not 1 <= workers <= MAX_WORKERS:
        raise ValueError(f"{name}: {workers} workers in the header, expected 1..{MAX_WORKERS}")
    if not 1 <= max_peers <= MAX_PEERS_LIMIT:
        raise ValueError(f"{name}: {max_peers} peers in the header, expected 1..{MAX_PEERS_LIMIT}")
    (dns,) = HEADER_FLAG.unpack(os.pread(fd, HEADER_FLAG.size, HEADER_DNS * 8))
    if dns not in {0, 1}:
        raise ValueError(f"{name}: DNS flag {dns} in the header, expected 0 or 1")
    expected = StatsRegion.size_for(workers, max_peers, dns=bool(dns))
    if size != expected:
        raise ValueError(f"{name}: {size} bytes, but its header describes {expected}")
    return SegmentHeader(int(workers), int(max_peers), int(created), bool(dns))
