"""One gateway of an HA pair, as the crypto process sees it (no sockets: gateway/ha/link.py).

Active: every tick it compares the session table, the peers' endpoints, the handshake
timestamps and the DNS proxy mappings with what it last queued, and queues the differences
in the outbox (the channel sends what the rate allows). A standby that (re)joins gets all of
it again (`resync`).

Standby: batches go into the mirror; DNS proxy mappings are applied at once (a flow's
mapping must exist before its first packet comes to us). On takeover the mirror's sessions
are written into this process's session table with their send counters jumped past the
active's reservations (mirror.takeover_limit) and adopted by the Device, with the peers'
endpoints and handshake timestamps: the clients go on without a handshake.

Every method runs in the crypto process's loop, so the Device is only touched there.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.ha.codec import (
    Batch,
    Change,
    DnsMapping,
    HandshakeTimestamp,
    NatEntry,
    NatGone,
    PeerEndpoint,
    Session,
    SessionGone,
)
from gateway.ha.mirror import Mirror, takeover_limit
from gateway.ha.outbox import Outbox
from gateway.wireguard.constants import REJECT_AFTER_MESSAGES
from gateway.wireguard.device import Device
from gateway.wireguard.sessions import SessionRecord, SessionTable

log = logging.getLogger(__name__)

ACTIVE, STANDBY, FAULT = "active", "standby", "fault"
SLOW_SCAN = 1.0  # seconds between looks at endpoints, timestamps and mappings


def _address(host: str) -> bytes:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.inet_pton(family, host)


def _host(address: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET6 if len(address) == 16 else socket.AF_INET, address)  # noqa: PLR2004 - IPv6's size


class ProxyState(Protocol):
    """The DNS resources' state in the crypto process (gateway/dataplane/hamain.py)."""

    def apply_mapping(self, mapping: DnsMapping) -> None: ...

    def nat_entries(self, now: float) -> list[NatEntry]: ...

    def restore_nat(self, change: NatEntry, expires: float) -> bool: ...


@dataclass
class HaStatus:
    """What `show` and /metrics report."""

    role: str
    connected: bool = False
    lag: float = 0.0  # seconds: how old the last batch was when it came (standby)
    last_sync: float | None = None  # wall clock of the last completed resync (standby)
    queued: int = 0  # changes waiting (active)
    sent: int = 0
    applied: int = 0
    takeovers: int = 0
    drops: int = 0


class HaNode:
    def __init__(
        self,
        device: Device,
        table: Callable[[], SessionTable | None],
        *,
        role: str,
        rate: int,
        proxy: ProxyState | None = None,
    ) -> None:
        self._device = device
        self._table = table
        self.outbox = Outbox(rate)
        self.mirror = Mirror()
        self._proxy = proxy
        self._received: dict[int, float] = {}  # local index -> monotonic time its record came
        self._received_nat: dict[Any, float] = {}  # NAT entry -> monotonic time it came
        self._sent: dict[Any, Change] = {}  # what the standby has of the slow-scanned state
        self._fingerprints: dict[int, tuple[int, int, int]] = {}  # per slot, as last queued
        self._slot_index: dict[int, int] = {}  # per slot, the local index last queued
        self._next_slow_scan = 0.0
        self._timestamps: dict[bytes, bytes] = {}
        self._mappings: dict[bytes, DnsMapping] = {}
        self.status = HaStatus(role)

    @property
    def role(self) -> str:
        return self.status.role

    # ---- the active's side ---------------------------------------------------------------

    def keep_timestamps(self, timestamps: dict[bytes, bytes]) -> None:
        self._timestamps.update(timestamps)

    def keep_mapping(self, mapping: DnsMapping) -> None:
        self._mappings[mapping.proxy_v4] = mapping

    def current(self, now: float) -> list[Change]:
        """The whole state to replicate, as changes."""
        changes: list[Change] = []
        table = self._table()
        if table is not None:
            changes += [_session(record, now) for _, record in table.records()]
        changes += self._endpoints()
        changes += [HandshakeTimestamp(k, t) for k, t in self._timestamps.items()]
        changes += list(self._mappings.values())
        changes += self._nat_entries(now)
        return changes

    def _nat_entries(self, now: float) -> list[Change]:
        return [] if self._proxy is None else list(self._proxy.nat_entries(now))

    def _endpoints(self) -> list[Change]:
        changes: list[Change] = []
        for peer in self._device.peers():
            if peer.endpoint is not None:
                host, port = peer.endpoint
                changes.append(PeerEndpoint(peer.public_key, _address(host), port))
        return changes

    def resync(self, now: float) -> None:
        """A standby (re)joined: everything again."""
        changes = self.current(now)
        self._sent = {c.key(): c for c in changes if not isinstance(c, Session)}
        table = self._table()
        self._fingerprints = {}
        self._slot_index = {}
        if table is not None:
            for slot, fingerprint in enumerate(table.fingerprints()):
                if SessionTable.holds_session(fingerprint):
                    self._fingerprints[slot] = fingerprint
                    self._slot_index[slot] = fingerprint[0] >> 32
        self.outbox.resync(changes)

    def tick(self, now: float, wall: float) -> Batch | None:
        """Queue what changed since the last tick; the batch the rate allows now."""
        if self.role == ACTIVE:
            self._queue_sessions(now)
            if now >= self._next_slow_scan:  # endpoints, timestamps, mappings: once a second
                self._next_slow_scan = now + SLOW_SCAN
                others = self._endpoints()
                others += [HandshakeTimestamp(k, t) for k, t in self._timestamps.items()]
                others += list(self._mappings.values())
                nat = self._nat_entries(now)
                for change in others + nat:
                    old = self._sent.get(change.key())
                    if old is None or not _same(old, change):
                        self._sent[change.key()] = change
                        self.outbox.put(change)
                self._queue_nat_gone({c.key() for c in nat})
        self.status.queued = len(self.outbox)
        batch = self.outbox.take(now, wall) if self.role == ACTIVE else None
        self.status.sent = self.outbox.sent
        return batch

    def _queue_nat_gone(self, current: set[Any]) -> None:
        gone = [
            old
            for key, old in self._sent.items()
            if isinstance(old, NatEntry) and key not in current
        ]
        for old in gone:
            del self._sent[old.key()]
            self.outbox.put(NatGone(old.flow))

    def _queue_sessions(self, now: float) -> None:
        """Sessions whose record changed (made, freed, a new block of counters reserved,
        moved between previous/current/next): three words a slot are compared, and only
        changed records are read."""
        table = self._table()
        if table is None:
            return
        known, indices = self._fingerprints, self._slot_index
        for slot, fingerprint in enumerate(table.fingerprints()):
            if known.get(slot) == fingerprint:
                continue
            old_index = indices.pop(slot, None)
            known.pop(slot, None)
            record = table.record(slot) if SessionTable.holds_session(fingerprint) else None
            if old_index is not None and (record is None or record.local_index != old_index):
                self.outbox.put(SessionGone(old_index))
            if record is not None:
                known[slot] = fingerprint
                indices[slot] = record.local_index
                self.outbox.put(_session(record, now))

    # ---- the standby's side --------------------------------------------------------------

    def begin_resync(self) -> None:
        self.mirror.begin_resync()

    def receive(self, batch: Batch, now: float, wall: float) -> None:
        for change in self.mirror.apply(batch, wall):
            if isinstance(change, Session):
                self._received[change.local_index] = now - change.age
            elif isinstance(change, NatEntry):
                self._received_nat[change.key()] = now
            elif isinstance(change, DnsMapping) and self._proxy is not None:
                self._proxy.apply_mapping(change)
                self._mappings[change.proxy_v4] = change
        self.status.lag = self.mirror.lag
        self.status.last_sync = self.mirror.last_sync
        self.status.applied = self.mirror.applied

    def set_role(self, role: str, now: float) -> None:
        old, self.status.role = self.status.role, role
        if role == ACTIVE and old != ACTIVE:
            self._take_over(now)
        log.info("ha: role %s (was %s)", role, old)

    def _take_over(self, now: float) -> None:
        """Continue the sessions the mirror holds, counters past the active's."""
        table = self._table()
        device = self._device
        for endpoint in self.mirror.endpoints():
            if device.peer(endpoint.peer) is not None:
                device.upsert_peer(
                    endpoint.peer, endpoint=(_host(endpoint.address), endpoint.port), now=now
                )
        for stamp in self.mirror.timestamps():
            device.restore_timestamp(stamp.peer, stamp.timestamp)
            self._timestamps[stamp.peer] = stamp.timestamp
        if self._proxy is not None:
            for change in self.mirror.nat_entries():
                received = self._received_nat.get(change.key(), now)
                self._proxy.restore_nat(change, received + change.ttl)
        kept = 0
        if table is not None:
            slots = []
            for session in self.mirror.sessions():
                created = self._received.get(session.local_index, now - session.age)
                record = SessionRecord(
                    session.peer,
                    session.local_index,
                    session.remote_index,
                    session.send_key,
                    session.recv_key,
                    session.is_initiator,
                    session.position,
                    created,
                    takeover_limit(session.send_limit, REJECT_AFTER_MESSAGES),
                )
                slot = table.insert(record)
                if slot is not None:
                    slots.append((slot, record))
            kept = device.restore_sessions(table, now, slots)
        self.status.takeovers += 1
        log.warning("ha: took over %d sessions from the other gateway", kept)


def _same(old: Change, new: Change) -> bool:
    """Equal but for a NAT entry's time left (it moves with every packet: not a change
    worth a message; its confirmation is)."""
    if isinstance(old, NatEntry) and isinstance(new, NatEntry):
        return old.confirmed == new.confirmed and old.outside_port == new.outside_port
    return old == new


def _session(record: SessionRecord, now: float) -> Session:
    return Session(
        record.peer,
        record.local_index,
        record.remote_index,
        record.send_key,
        record.recv_key,
        record.is_initiator,
        min(record.position, 2),
        max(0.0, now - record.created),
        record.send_limit,
    )
