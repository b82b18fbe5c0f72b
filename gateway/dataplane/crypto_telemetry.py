"""The crypto process's figures, copied into its shared stats block by the loop.

The loop's hot path counts in plain ints (the Device's counters, the firewall's, the proxy
handler's summary); these copies run at most once a second (and before the loop sleeps), as
deltas, because the block outlives a restarted crypto process and its counters only grow.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping

from gateway.dataplane.firewall import Firewall, FirewallCounts
from gateway.endpoint import format_endpoint
from gateway.telemetry import stats as st
from gateway.wireguard.device import Device
from gateway.wireguard.drops import Drop

log = logging.getLogger(__name__)

EVENT_COUNTER_SLOTS: dict[str, int] = {
    "handshakes_initiated": st.HANDSHAKES_INITIATED,
    "handshakes_completed": st.HANDSHAKES_COMPLETED,
    "handshakes_rejected": st.HANDSHAKES_REJECTED,
    "cookie_replies_sent": st.COOKIE_REPLIES_SENT,
}


class CounterSync:
    """Copies the core's counters into this process's shared block as deltas.

    The block outlives a restarted crypto process, so counters there only ever grow.
    """

    def __init__(self, block: memoryview) -> None:
        self.block = block
        self._drops: Counter[Drop] = Counter()
        self._events: Counter[str] = Counter()

    def sync(self, device: Device) -> None:
        block = self.block
        for reason, count in device.drops.items():
            delta = count - self._drops[reason]
            if delta:
                block[st.CORE_DROP_SLOTS[reason]] += delta
                self._drops[reason] = count
        for name, slot in EVENT_COUNTER_SLOTS.items():
            count = device.counters[name]
            delta = count - self._events[name]
            if delta:
                block[slot] += delta
                self._events[name] = count


class NatCounterSync:
    """Copies the proxy handler's summary into this process's block (deltas; the gauge as
    it is)."""

    def __init__(self, block: memoryview) -> None:
        self.block = block
        self._last: dict[str, int] = {}

    def sync(self, summary: Mapping[str, int]) -> None:
        for index, name in enumerate(st.NAT_COUNTER_NAMES):
            value = summary.get(name, 0)
            if name in st.NAT_GAUGES:
                self.block[st.NAT_BASE + index] = value
                continue
            delta = value - self._last.get(name, 0)
            if delta > 0:
                self.block[st.NAT_BASE + index] += delta
            self._last[name] = value


class PeerStatsSync:
    """Keeps the shared per-peer table (for /metrics and `show`) up to date.

    Copies only the peers the device reports changed, so idle peers cost nothing. Starts
    from the slots a previous crypto process left (after a restart), releasing those of
    peers that are gone at the first sync.
    """

    def __init__(self, table: st.PeerTable, unix_offset: float) -> None:
        self.table = table
        self.unix_offset = unix_offset
        self._slots: dict[bytes, int] = table.adopt()
        self._adopted: list[bytes] | None = list(self._slots)
        self._endpoints: dict[bytes, str] = {}

    def sync(self, device: Device, block: memoryview) -> None:
        words = self.table.words
        if self._adopted is not None:
            for key in self._adopted:
                if device.peer(key) is None:
                    self.table.release(self._slots.pop(key))
            self._adopted = None
        for peer in device.take_changed_peers():
            key = peer.public_key
            current = device.peer(key)
            if current is not peer:  # removed (perhaps replaced by a new peer with its key)
                if current is None and key in self._slots:
                    self.table.release(self._slots.pop(key))
                    self._endpoints.pop(key, None)
                continue
            slot = self._slots.get(key)
            if slot is None:
                slot = self.table.assign(key)
                if slot is None:
                    block[st.PEER_TABLE_FULL] += 1
                    continue
                self._slots[key] = slot
            endpoint = "" if peer.endpoint is None else format_endpoint(peer.endpoint)
            if self._endpoints.get(key) != endpoint:
                self.table.set_endpoint(slot, endpoint)
                self._endpoints[key] = endpoint
            base = self.table.base(slot)
            words[base + st.PEER_RX_BYTES] = peer.rx_bytes
            words[base + st.PEER_RX_PACKETS] = peer.rx_packets
            words[base + st.PEER_TX_BYTES] = peer.tx_bytes
            words[base + st.PEER_TX_PACKETS] = peer.tx_packets
            if peer.last_handshake is not None:
                wall_ns = int((peer.last_handshake + self.unix_offset) * 1e9)
                self.table.set_last_handshake(slot, wall_ns)


class FirewallSync:
    """Copies the firewall's counters into the process block (as deltas) and its
    per-resource counts into the shared resource table."""

    def __init__(self, block: memoryview, table: st.ResourceTable | None) -> None:
        self.block = block
        self.table = table
        self._firewall: Firewall | None = None
        self._last = FirewallCounts()
        self._slots: dict[str, int] = {}
        self._table_full_logged = False

    def sync_counters(self, firewall: Firewall | None) -> None:
        if firewall is None:
            return
        if firewall is not self._firewall:  # a new firewall counts from zero
            self._firewall, self._last = firewall, FirewallCounts()
        counts, last, block = firewall.counts, self._last, self.block
        for name, slot in _FIREWALL_SLOTS:
            delta = getattr(counts, name) - getattr(last, name)
            if delta:
                block[slot] += delta
                setattr(last, name, getattr(counts, name))

    def sync_resources(self, firewall: Firewall | None) -> None:
        table = self.table
        if table is None:
            return
        taken = {} if firewall is None else firewall.take_resource_counts()
        for name, counts in taken.items():
            slot = self._slots.get(name)
            if slot is None:
                slot = table.slot_for(name)
                if slot is None:
                    if not self._table_full_logged:
                        log.warning("resource table full: %s and later have no metrics", name)
                        self._table_full_logged = True
                    continue
                self._slots[name] = slot
            if any(counts):
                table.add(slot, *counts)
        for name in [n for n in self._slots if n not in taken]:
            table.release(self._slots.pop(name))


_FIREWALL_SLOTS = (
    ("policy_drops", st.DROP_POLICY),
    ("malformed", st.DROP_MALFORMED),
    ("routing_header", st.DROP_ROUTING_HEADER),
    ("icmp_errors_sent", st.ICMP_ERRORS_SENT),
    ("icmp_errors_rate_limited", st.ICMP_ERRORS_RATE_LIMITED),
)
