"""The sans-I/O WireGuard device: peers, index table, cryptokey routing, handshakes, timers.

The data plane's crypto process drives it with plaintext packets from the TUN
(`handle_packet`), datagrams from the UDP socket (`handle_datagram`) and the clock (`tick`),
and sends what `take_transmits` returns. It never touches a socket or reads a clock: every
time is the caller's monotonic `now` in seconds.
"""

from __future__ import annotations

import ipaddress
import itertools
import os
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence

from gateway.endpoint import Endpoint
from gateway.wireguard.allowedips import AllowedIPs, Network
from gateway.wireguard.constants import (
    COOKIE_REPLY_SIZE,
    DEFAULT_UNDER_LOAD_THRESHOLD,
    INITIATION_SIZE,
    KEEPALIVE_SIZE,
    KEEPALIVE_TIMEOUT,
    KEY_SIZE,
    MAX_OUTBOX,
    MAX_STAGED_PACKETS,
    MAX_TIMER_HANDSHAKES,
    MAX_TRANSPORT_SIZE,
    MESSAGE_COOKIE_REPLY,
    MESSAGE_INITIATION,
    MESSAGE_RESPONSE,
    MESSAGE_TRANSPORT,
    REJECT_AFTER_MESSAGES,
    REJECT_AFTER_TIME,
    REKEY_AFTER_MESSAGES,
    REKEY_AFTER_TIME,
    REKEY_TIMEOUT,
    RESPONSE_SIZE,
    TAG_SIZE,
    TRANSPORT_HEADER_SIZE,
    TRANSPORT_OVERHEAD,
    ZERO_KEYS_AFTER,
)
from gateway.wireguard.cookie import Admission, CookieChecker, UnderLoad
from gateway.wireguard.crypto import CryptoFailure, tai64n
from gateway.wireguard.drops import Drop
from gateway.wireguard.indextable import IndexEntry
from gateway.wireguard.keypair import Keypair
from gateway.wireguard.messages import (
    INITIATION_MAC1_END,
    RESPONSE_MAC1_END,
    TRANSPORT_HEADER,
    parse_cookie_reply,
    parse_initiation,
    parse_response,
)
from gateway.wireguard.noise import Handshake, Identity, InitiationRejected, consume_initiation
from gateway.wireguard.peer import Peer
from gateway.wireguard.session_crypto import OPENED, REPLAYED, PySessions, Sessions
from gateway.wireguard.sessions import POSITIONS, SessionRecord, SessionTable
from gateway.wireguard.timers import TimerQueue, expired

Datagram = bytes | bytearray
Packet = bytes | bytearray | memoryview


class _Unchanged:
    def __repr__(self) -> str:
        return "UNCHANGED"


UNCHANGED = _Unchanged()
"""Sentinel for `upsert_peer`: leave this setting as it is."""

_ZEROS = bytes(16)
_IPV4 = 4
_IPV6 = 6
_IPV4_HEADER = 20
_IPV6_HEADER = 40
_LAST_MINUTE = REJECT_AFTER_TIME - (KEEPALIVE_TIMEOUT + REKEY_TIMEOUT)
_JITTER_MS = 334
_ADMISSION_DROPS = {
    Admission.BAD_MAC1: Drop.BAD_MAC1,
    Admission.COOKIE: Drop.UNDER_LOAD_COOKIE,
    Admission.COOKIE_LIMITED: Drop.UNDER_LOAD_COOKIE,
    Admission.RATE_LIMITED: Drop.RATE_LIMITED,
}


def padded_size(size: int, mtu: int) -> int:
    """A packet's length padded to 16 for encryption, but not past the MTU (0: none)."""
    padded = (size + 15) & ~15
    return max(mtu, size) if mtu and padded > mtu else padded


def inner_source(inner: bytearray) -> tuple[int, bytes] | None:
    """(real length, source address) of a decrypted packet; None if it is not a whole IPv4 or
    IPv6 packet (its header's length past the end, or shorter than a header)."""
    version = inner[0] >> 4 if inner else 0
    # Lengths from single bytes: int.from_bytes of a slice costs an allocation per packet.
    if version == _IPV4 and len(inner) >= _IPV4_HEADER:
        length, source = inner[2] << 8 | inner[3], bytes(inner[12:16])
    elif version == _IPV6 and len(inner) >= _IPV6_HEADER:
        length, source = _IPV6_HEADER + (inner[4] << 8 | inner[5]), bytes(inner[8:24])
    else:
        return None
    return (length, source) if _IPV4_HEADER <= length <= len(inner) else None


def _source_bytes(src: Endpoint) -> tuple[bytes, bytes]:
    """(ip, ip+port) of a datagram source: the rate-limit key and the cookie input."""
    try:
        ip = ipaddress.ip_address(src[0].split("%", 1)[0]).packed
    except ValueError:
        ip = src[0].encode()
    return ip, ip + (src[1] & 0xFFFF).to_bytes(2, "big")


def _peer_order(peer: Peer) -> int:
    return peer.order


class Device:
    """One WireGuard interface's protocol state (see module docstring)."""

    def __init__(  # noqa: PLR0913 # keyword-only tunables with defaults
        self,
        private_key: bytes | None,
        *,
        rng: Callable[[int], bytes] = os.urandom,
        mtu: int = 1420,
        unix_time_offset: float = 0.0,
        under_load_threshold: int | None = DEFAULT_UNDER_LOAD_THRESHOLD,
        max_staged_per_peer: int = MAX_STAGED_PACKETS,
        max_outbox: int = MAX_OUTBOX,
        transport: Sessions | None = None,
    ) -> None:
        """`unix_time_offset` maps `now` to Unix time for handshake timestamps (TAI64N):
        drivers pass `time.time() - time.monotonic()` so timestamps keep increasing across
        restarts, as peers require. `transport` holds the sessions' keys, counters and
        replay windows: the crypto process passes its Transport (native or Python,
        gateway/dataplane/transport.py); the default is the pure-Python sessions."""
        self.transport: Sessions = PySessions() if transport is None else transport
        # Peers whose send state (current session, endpoint, staged packets) or existence
        # changed since the driver last pushed them into the transport's peer table.
        self._transport_dirty: set[Peer] = set()
        self._transport_removed: list[int] = []  # orders of peers removed since
        self._rng = rng
        self.mtu = mtu
        self.unix_time_offset = unix_time_offset
        self.max_staged_per_peer = max_staged_per_peer
        self.max_outbox = max_outbox
        self.drops: Counter[Drop] = Counter()
        self.counters: Counter[str] = Counter()
        self._peers: dict[bytes, Peer] = {}
        self._peer_order = itertools.count()  # tick runs due peers in the order they came
        self._timers: TimerQueue[Peer] = TimerQueue()
        # Peers whose figures (rx/tx, handshake, endpoint) changed or that came or went since
        # the driver last took them: copying stats costs nothing per idle peer.
        self._changed: set[Peer] = set()
        self._allowed: AllowedIPs[Peer] = AllowedIPs()
        self._index: dict[int, IndexEntry] = {}  # our receiver indices
        self._endpoint_peers: dict[Endpoint, Peer] = {}  # the peer each endpoint is of
        self._outbox: deque[tuple[Endpoint, Datagram]] = deque()
        self._new_timestamps: dict[bytes, bytes] = {}  # peer key -> TAI64N, one per peer
        self._handshake_arrived: float | None = None  # while a held-back handshake is handled
        self._under_load = UnderLoad(under_load_threshold)
        self._scratch = memoryview(bytearray(MAX_TRANSPORT_SIZE))
        self._identity: Identity | None = None
        self._checker: CookieChecker | None = None
        # Where sessions are kept for a successor process (None: nowhere); restore_sessions
        # sets it.
        self.sessions: SessionTable | None = None
        self.set_private_key(private_key)

    # ---- configuration -------------------------------------------------------------------

    @property
    def private_key(self) -> bytes | None:
        return None if self._identity is None else self._identity.private_key

    @property
    def public_key(self) -> bytes | None:
        return None if self._identity is None else self._identity.public_key

    @property
    def under_load_threshold(self) -> int | None:
        return self._under_load.load.threshold

    @under_load_threshold.setter
    def under_load_threshold(self, value: int | None) -> None:
        self._under_load.load.threshold = value

    def set_private_key(self, key: bytes | None) -> None:
        """Change our static key; every session ends (peers must handshake again)."""
        if key is not None and len(key) != KEY_SIZE:
            raise ValueError(f"private key must be {KEY_SIZE} bytes, got {len(key)}")
        if key is not None and self._identity is not None and key == self._identity.private_key:
            return
        self._identity = None if key is None else Identity(key)
        self._checker = (
            None if self._identity is None else CookieChecker(self._identity.public_key, self._rng)
        )
        if self._identity is not None and self._identity.public_key in self._peers:
            self.remove_peer(self._identity.public_key)  # a peer cannot be ourselves
        for peer in self._peers.values():
            self._end_sessions(peer)
            peer.handshake.set_identity(self._identity)

    def peers(self) -> Iterable[Peer]:
        return list(self._peers.values())

    def peer(self, public_key: bytes) -> Peer | None:
        return self._peers.get(public_key)

    @property
    def routes_version(self) -> int:
        """Changes whenever any peer's allowed IPs change (what `peer_key_for` answers)."""
        return self._allowed.version

    def peer_key_for(self, address: bytes | bytearray | memoryview) -> bytes | None:
        """The public key of the peer whose allowed IPs contain a raw 4- or 16-byte address
        (the firewall's lookup of a packet's peer, through the allowed-IPs cache)."""
        peer = self._allowed.lookup(address)
        return None if peer is None else peer.public_key

    def take_changed_peers(self) -> set[Peer]:
        """Peers added, removed or with new figures since the last call (a removed peer is
        no longer `peer(its key)`)."""
        changed = self._changed
        self._changed = set()
        return changed

    @property
    def has_changed_peers(self) -> bool:
        return bool(self._changed)

    def upsert_peer(  # noqa: PLR0913 # mirrors the UAPI peer settings, keyword-only
        self,
        public_key: bytes,
        *,
        preshared_key: bytes | _Unchanged | None = UNCHANGED,
        endpoint: Endpoint | _Unchanged | None = UNCHANGED,
        persistent_keepalive: int | _Unchanged = UNCHANGED,
        allowed_ips: Sequence[Network] | None = None,
        replace_allowed_ips: bool = False,
        now: float,
    ) -> Peer:
        """Add a peer or change one; other peers and this peer's sessions are untouched."""
        if self._identity is not None and public_key == self._identity.public_key:
            raise ValueError("a peer cannot have our own public key")
        peer = self._peers.get(public_key)
        if peer is None:
            peer = Peer(public_key)
            peer.handshake.set_identity(self._identity)
            peer.bind_allowed_ips(self._allowed)
            peer.order = next(self._peer_order)
            peer.timers.attach(self._timers, peer)
            self._peers[public_key] = peer
        if not isinstance(preshared_key, _Unchanged):
            peer.preshared_key = preshared_key
        if not isinstance(endpoint, _Unchanged):
            self._set_endpoint(peer, endpoint)
            peer.endpoint_arrival = now
        self._changed.add(peer)
        self._transport_dirty.add(peer)
        if replace_allowed_ips:
            self._allowed.remove_value(peer)
        for network in allowed_ips or ():
            self._allowed.insert(network, peer)
        if not isinstance(persistent_keepalive, _Unchanged):
            if not 0 <= persistent_keepalive <= 0xFFFF:  # noqa: PLR2004 # u16 in the UAPI
                raise ValueError(f"persistent keepalive out of range: {persistent_keepalive}")
            enabled = persistent_keepalive and not peer.persistent_keepalive
            peer.persistent_keepalive = persistent_keepalive
            if not persistent_keepalive:
                peer.timers.persistent_keepalive = None
            elif enabled and peer.endpoint is not None:
                self._send_keepalive(peer, now)  # as wireguard-go: start right away
        return peer

    def restore_timestamp(self, public_key: bytes, timestamp: bytes) -> bool:
        """Raise a peer's floor for initiation timestamps to a value a previous run accepted
        (the greatest one wins, as in the kernel); False if there is no such peer."""
        peer = self._peers.get(public_key)
        if peer is None:
            return False
        peer.handshake.last_timestamp = max(peer.handshake.last_timestamp, timestamp)
        return True

    def take_timestamps(self) -> dict[bytes, bytes]:
        """Initiation timestamps accepted since the last call (peer key -> TAI64N), for a
        driver that keeps them across restarts (see restore_timestamp)."""
        taken, self._new_timestamps = self._new_timestamps, {}
        return taken

    def remove_allowed_ip(self, peer: Peer, network: Network) -> bool:
        """Take `network` away from `peer` (only if it is the peer's); True if it was."""
        if network not in self._allowed.prefixes_of(peer):
            return False
        return self._allowed.remove(network)

    def remove_peer(self, public_key: bytes) -> bool:
        peer = self._peers.pop(public_key, None)
        if peer is None:
            return False
        self._end_sessions(peer)
        self._set_endpoint(peer, None)
        self._allowed.remove_value(peer)
        self._new_timestamps.pop(public_key, None)
        peer.staged.clear()
        peer.timers.clear()
        peer.timers.detach()
        self._changed.add(peer)
        self._transport_dirty.discard(peer)  # holds no removed peer: it must be freed
        self._transport_removed.append(peer.order)
        return True

    def _end_sessions(self, peer: Peer) -> None:
        for kp in peer.keypairs.clear():
            self._drop_keypair(kp)
        self._transport_dirty.add(peer)
        self._forget_handshake(peer)

    def _set_endpoint(self, peer: Peer, endpoint: Endpoint | None) -> None:
        old = peer.endpoint
        if old is not None and self._endpoint_peers.get(old) is peer:
            del self._endpoint_peers[old]
        peer.endpoint = endpoint
        if endpoint is not None:
            self._endpoint_peers[endpoint] = peer

    def _drop_keypair(self, kp: Keypair) -> None:
        self._index.pop(kp.local_index, None)
        self.transport.remove(kp.local_index)
        if self.sessions is not None:
            self.sessions.forget(kp)

    def _reserve(self, kp: Keypair) -> None:
        if self.sessions is not None:
            self.sessions.reserve(kp)
        else:
            kp.send_limit = REJECT_AFTER_MESSAGES

    def restore_sessions(
        self,
        table: SessionTable,
        now: float,
        records: Sequence[tuple[int, SessionRecord]] | None = None,
    ) -> int:
        """Continue the sessions a previous process kept in `table` (or those of `records`,
        slots of it: another node's, gateway/ha), and keep new ones there from now on;
        returns how many came back. A record whose peer is gone, that expired, or that
        clashes with one already restored is freed."""
        restored = 0
        for slot, record in table.records() if records is None else records:
            peer = self._peers.get(record.peer)
            position = POSITIONS[record.position] if record.position < len(POSITIONS) else ""
            if (
                peer is None
                or not position
                or getattr(peer.keypairs, position) is not None
                or record.local_index in self._index
                or not 0 <= now - record.created < REJECT_AFTER_TIME
            ):
                table.discard(slot)
                continue
            kp = table.adopt(slot, record, self.transport, peer.order)
            setattr(peer.keypairs, position, kp)
            self._index[kp.local_index] = IndexEntry(peer, kp)
            if kp is peer.keypairs.current:
                peer.last_handshake = max(peer.last_handshake or kp.created, kp.created)
                peer.timers.zero_key_material = kp.created + ZERO_KEYS_AFTER
            self._changed.add(peer)
            self._transport_dirty.add(peer)
            restored += 1
        self.sessions = table
        return restored

    def _forget_handshake(self, peer: Peer) -> None:
        self._drop_handshake_index(peer)
        peer.handshake.clear()

    def _drop_handshake_index(self, peer: Peer) -> None:
        """Free the index of our pending initiation to `peer`, if it still has one."""
        index = peer.handshake.local_index
        entry = self._index.get(index) if index else None
        if entry is not None and entry.peer is peer and entry.keypair is None:
            del self._index[index]

    # ---- outbound data path ----------------------------------------------------------------

    def handle_packet(self, packet: Packet, now: float) -> tuple[Endpoint, Datagram] | None:
        """A plaintext IP packet from the TUN: its encrypted datagram, or None (staged/dropped)."""
        size = len(packet)
        if size < _IPV4_HEADER:
            self.drops[Drop.MALFORMED_PACKET] += 1
            return None
        version = packet[0] >> 4
        if version == _IPV4:
            peer = self._allowed.lookup(packet[16:20])
        elif version == _IPV6 and size >= _IPV6_HEADER:
            peer = self._allowed.lookup(packet[24:40])
        else:
            self.drops[Drop.MALFORMED_PACKET] += 1
            return None
        if peer is None:
            self.drops[Drop.NO_PEER_FOR_DESTINATION] += 1
            return None
        kp = peer.keypairs.current
        if kp is None or not kp.usable_for_sending(now) or peer.staged:
            self._stage(peer, bytes(packet), now)
            return None
        return self._encrypt(peer, kp, packet, now)

    def _encrypt(
        self, peer: Peer, kp: Keypair, packet: Packet, now: float
    ) -> tuple[Endpoint, Datagram] | None:
        endpoint = peer.endpoint
        if endpoint is None:
            self.drops[Drop.NO_ENDPOINT] += 1
            return None
        size = len(packet)
        padded = padded_size(size, self.mtu)
        if kp.send_counter >= kp.send_limit:  # the reserved block is used up: persist the next
            self._reserve(kp)
        out = bytearray(TRANSPORT_HEADER_SIZE + padded + TAG_SIZE)
        if padded == size:
            plaintext = packet
        else:
            scratch = self._scratch
            scratch[:size] = packet
            scratch[size:padded] = _ZEROS[: padded - size]
            plaintext = scratch[:padded]
        if not self.transport.seal(kp.local_index, plaintext, out):  # counters spent
            self.drops[Drop.EXPIRED_KEYPAIR] += 1
            return None
        self._sent_transport(peer, kp, len(out), now, data=size > 0)
        return endpoint, out

    def _sent_transport(  # noqa: PLR0913 - keyword-only after the time
        self, peer: Peer, kp: Keypair, nbytes: int, now: float, *, data: bool, packets: int = 1
    ) -> None:
        """Figures and timers after `packets` transport messages (`nbytes` in all) went out
        on `kp` at `now`; `data`: they carried packets (not a keepalive)."""
        peer.tx_bytes += nbytes
        peer.tx_packets += packets
        self._changed.add(peer)
        timers = peer.timers
        timers.send_keepalive = None
        if peer.persistent_keepalive:
            timers.persistent_keepalive = now + peer.persistent_keepalive
        if data and timers.new_handshake is None:
            timers.new_handshake = now + KEEPALIVE_TIMEOUT + REKEY_TIMEOUT + self._jitter()
        if kp.is_initiator and (
            kp.send_counter > REKEY_AFTER_MESSAGES or now - kp.created > REKEY_AFTER_TIME
        ):
            self._initiate(peer, now, retry=False)

    def _stage(self, peer: Peer, packet: bytes, now: float) -> None:
        if len(peer.staged) >= self.max_staged_per_peer:
            peer.staged.popleft()
            self.drops[Drop.STAGED_OVERFLOW] += 1
        peer.staged.append(packet)
        self._transport_dirty.add(peer)
        self.counters["staged"] += 1
        self._flush_staged(peer, now)

    def _flush_staged(self, peer: Peer, now: float) -> None:
        kp = peer.keypairs.current
        if kp is None or not kp.usable_for_sending(now):
            self._initiate(peer, now, retry=False)
            return
        while peer.staged:
            sent = self._encrypt(peer, kp, peer.staged.popleft(), now)
            if sent is not None:
                self._transmit(*sent)
        self._transport_dirty.add(peer)

    def _send_keepalive(self, peer: Peer, now: float) -> None:
        if not peer.staged:
            peer.staged.append(b"")
            self._transport_dirty.add(peer)
            self.counters["keepalives_sent"] += 1
        self._flush_staged(peer, now)

    def _transmit(self, endpoint: Endpoint, data: Datagram) -> None:
        if len(self._outbox) >= self.max_outbox:
            self.drops[Drop.OUTBOX_OVERFLOW] += 1
            return
        self._outbox.append((endpoint, data))

    def take_transmits(self) -> list[tuple[Endpoint, Datagram]]:
        """Everything queued to send (handshakes, cookie replies, keepalives, flushed packets)."""
        out = list(self._outbox)
        self._outbox.clear()
        return out

    def _jitter(self) -> float:
        return int.from_bytes(self._rng(2), "little") % _JITTER_MS / 1000

    def _new_index(self) -> int:
        while True:
            index = int.from_bytes(self._rng(4), "little")
            if index and index not in self._index:
                return index

    def _initiate(self, peer: Peer, now: float, *, retry: bool) -> None:
        timers = peer.timers
        if not retry:
            timers.handshake_attempts = 0
        identity = self._identity
        if (
            now - timers.last_sent_handshake < REKEY_TIMEOUT
            or identity is None
            or peer.handshake.static_static is None
            or peer.endpoint is None
        ):
            return
        timers.last_sent_handshake = now
        self._forget_handshake(peer)
        index = self._new_index()
        msg = peer.handshake.create_initiation(
            identity, index, self._rng(KEY_SIZE), tai64n(now + self.unix_time_offset)
        )
        self._index[index] = IndexEntry(peer)
        peer.cookies.add_macs(msg, INITIATION_MAC1_END, now)
        self._sent_handshake(peer, now)
        self._transmit(peer.endpoint, bytes(msg))
        peer.tx_bytes += INITIATION_SIZE
        self._changed.add(peer)
        timers.retransmit_handshake = now + REKEY_TIMEOUT + self._jitter()
        self.counters["handshakes_initiated"] += 1

    def _sent_handshake(self, peer: Peer, now: float) -> None:
        peer.timers.send_keepalive = None
        if peer.persistent_keepalive:
            peer.timers.persistent_keepalive = now + peer.persistent_keepalive

    def _received_authenticated(self, peer: Peer, src: Endpoint, now: float) -> None:
        # Roaming: follow the latest authenticated source (and its local), by arrival. A
        # handshake the driver held back arrived before transport handled since: it moves
        # the endpoint only if nothing that arrived later did (a listen-port change must not
        # be undone by an initiation sent from the old port just before).
        arrived = self._handshake_arrived
        if arrived is None or arrived > peer.endpoint_arrival:
            if peer.endpoint is not src:  # by identity: a StickyEndpoint equals its host/port
                self._transport_dirty.add(peer)
            if peer.endpoint != src:
                self._set_endpoint(peer, src)
            peer.endpoint = src
            peer.endpoint_arrival = now if arrived is None else arrived
        self._changed.add(peer)  # and its rx figures or handshake, which the callers update
        peer.timers.new_handshake = None
        if peer.persistent_keepalive:
            peer.timers.persistent_keepalive = now + peer.persistent_keepalive

    # ---- inbound ---------------------------------------------------------------------------

    def handle_datagram(
        self, data: Packet, src: Endpoint, now: float, *, arrived: float | None = None
    ) -> bytearray | None:
        """A UDP datagram: the authenticated inner IP packet to write to the TUN, or None.

        `arrived`: when a handshake message the driver queued came in, if it is handled
        after transport that came later (see _received_authenticated)."""
        size = len(data)
        if size < 4 or data[1] or data[2] or data[3]:  # noqa: PLR2004 # type field
            self.drops[Drop.MALFORMED] += 1
            return None
        kind = data[0]
        if kind == MESSAGE_TRANSPORT:
            if size < KEEPALIVE_SIZE or size > MAX_TRANSPORT_SIZE:
                self.drops[Drop.MALFORMED] += 1
                return None
            return self._receive_transport(data, src, now)
        if kind in (MESSAGE_INITIATION, MESSAGE_RESPONSE, MESSAGE_COOKIE_REPLY):
            self._handshake_arrived = arrived
            try:
                self._receive_handshake(bytes(data), kind, src, now)
            except CryptoFailure:
                self.drops[Drop.HANDSHAKE_FAILED] += 1
                self.counters["handshakes_rejected"] += 1
            finally:
                self._handshake_arrived = None
            return None
        self.drops[Drop.MALFORMED] += 1
        return None

    def _receive_transport(self, data: Packet, src: Endpoint, now: float) -> bytearray | None:
        _, receiver, counter = TRANSPORT_HEADER.unpack_from(data)
        entry = self._index.get(receiver)
        kp = None if entry is None else entry.keypair
        if entry is None or kp is None:
            self.drops[Drop.UNKNOWN_INDEX] += 1
            if entry is None:
                self._lost_session(src, now)
            return None
        if now - kp.created >= REJECT_AFTER_TIME or counter >= REJECT_AFTER_MESSAGES:
            self.drops[Drop.EXPIRED_KEYPAIR] += 1
            return None
        size = len(data)
        out = bytearray(size - TRANSPORT_OVERHEAD)
        status = self.transport.open(receiver, data, out)
        if status != OPENED:
            self.drops[Drop.REPLAY if status == REPLAYED else Drop.DECRYPT_FAILED] += 1
            return None
        kp.keep_window()  # a kept session's window, for a successor
        peer = entry.peer
        keypairs = peer.keypairs
        if kp is keypairs.next:
            dropped = keypairs.confirm(kp)
            if dropped is not None:
                self._drop_keypair(dropped)
            self.transport.confirm(kp.local_index)
            self._transport_dirty.add(peer)
            if self.sessions is not None:
                self.sessions.arrange(keypairs)
            self._handshake_complete(peer, now)
            self._flush_staged(peer, now)
        else:
            self._keep_key_fresh_receiving(peer, kp, now)
        self._received_authenticated(peer, src, now)
        peer.rx_bytes += size
        peer.rx_packets += 1
        if not out:
            self.counters["keepalives_received"] += 1
            return None
        self._received_data(peer, 1, now)
        return self._check_inner(peer, out)

    @staticmethod
    def _received_data(peer: Peer, packets: int, now: float) -> None:
        """Keepalive timers after `packets` data packets arrived at `now`."""
        timers = peer.timers
        if timers.send_keepalive is None:
            timers.send_keepalive = now + KEEPALIVE_TIMEOUT
            packets -= 1
        if packets:
            timers.need_another_keepalive = True

    def _lost_session(self, src: Endpoint, now: float) -> None:
        """A transport message for a session we do not have, from a peer's endpoint: the
        session was lost (a restart that could not keep it), so start a new one at once
        rather than wait for the peer's timers (15 s). _initiate sends at most one
        initiation per REKEY_TIMEOUT per peer; a peer with a session is left alone."""
        peer = self._endpoint_peers.get(src)
        if peer is not None and peer.keypairs.current is None:
            self._initiate(peer, now, retry=False)
            self.counters["lost_session_handshakes"] += 1

    def _check_inner(self, peer: Peer, out: bytearray) -> bytearray | None:
        """Trim the padding and drop an inner packet whose source is not the peer's (crypto-RP)."""
        found = inner_source(out)
        if found is None:
            self.drops[Drop.MALFORMED_INNER] += 1
            return None
        length, source = found
        if self._allowed.lookup(source) is not peer:
            self.drops[Drop.SPOOFED_SOURCE] += 1
            return None
        del out[length:]
        return out

    def _keep_key_fresh_receiving(self, peer: Peer, kp: Keypair, now: float) -> None:
        """An initiator rekeys before the session it receives on is about to be rejected."""
        if (
            kp is peer.keypairs.current
            and kp.is_initiator
            and not peer.timers.sent_last_minute_handshake
            and now - kp.created > _LAST_MINUTE
        ):
            peer.timers.sent_last_minute_handshake = True
            self._initiate(peer, now, retry=False)

    def _receive_handshake(self, msg: bytes, kind: int, src: Endpoint, now: float) -> None:
        expected = {
            MESSAGE_INITIATION: INITIATION_SIZE,
            MESSAGE_RESPONSE: RESPONSE_SIZE,
            MESSAGE_COOKIE_REPLY: COOKIE_REPLY_SIZE,
        }[kind]
        if len(msg) != expected:
            self.drops[Drop.MALFORMED] += 1
            return
        identity, checker = self._identity, self._checker
        if identity is None or checker is None:
            self.drops[Drop.NO_PRIVATE_KEY] += 1
            return
        if kind == MESSAGE_COOKIE_REPLY:
            self._receive_cookie_reply(msg, now)
            return
        mac1_end = INITIATION_MAC1_END if kind == MESSAGE_INITIATION else RESPONSE_MAC1_END
        ip, source = _source_bytes(src)
        verdict, reply = self._under_load.admit(checker, msg, mac1_end, ip, source, now)
        if verdict is not Admission.ADMIT:
            if reply is not None:
                self._transmit(src, reply)
                self.counters["cookie_replies_sent"] += 1
            self.drops[_ADMISSION_DROPS[verdict]] += 1
            return
        if kind == MESSAGE_INITIATION:
            self._receive_initiation(identity, msg, src, now)
        else:
            self._receive_response(identity, msg, src, now)

    def _receive_cookie_reply(self, msg: bytes, now: float) -> None:
        reply = parse_cookie_reply(msg)
        if reply is None:
            self.drops[Drop.MALFORMED] += 1
            return
        entry = self._index.get(reply.receiver)
        if entry is None:
            self.drops[Drop.UNKNOWN_INDEX] += 1
        elif entry.peer.cookies.consume_reply(reply, now):
            self.counters["cookie_replies_received"] += 1
        else:
            self.drops[Drop.BAD_COOKIE_REPLY] += 1

    def _receive_initiation(
        self, identity: Identity, msg: bytes, src: Endpoint, now: float
    ) -> None:
        initiation = parse_initiation(msg)
        if initiation is None:
            self.drops[Drop.MALFORMED] += 1
            return

        def find(public_key: bytes) -> Handshake | None:
            peer = self._peers.get(public_key)
            return None if peer is None else peer.handshake

        try:
            hs = consume_initiation(identity, initiation, find, now)
        except InitiationRejected as exc:
            self.drops[exc.reason] += 1
            self.counters["handshakes_rejected"] += 1
            return
        if hs is None:
            self.drops[Drop.UNKNOWN_PEER] += 1
            self.counters["handshakes_rejected"] += 1
            return
        peer = self._peers[hs.remote_static]
        self._new_timestamps[peer.public_key] = hs.last_timestamp
        peer.rx_bytes += len(msg)
        self._received_authenticated(peer, src, now)
        self._drop_handshake_index(peer)  # our own pending initiation lost the race
        index = self._new_index()
        response, keys = hs.create_response(index, self._rng(KEY_SIZE))
        peer.cookies.add_macs(response, RESPONSE_MAC1_END, now)
        self._install(peer, Keypair(keys, now, self.transport, peer.order), now)
        peer.timers.last_sent_handshake = now
        self._sent_handshake(peer, now)
        self._transmit(src, bytes(response))
        peer.tx_bytes += RESPONSE_SIZE
        self.counters["handshake_responses_sent"] += 1

    def _receive_response(self, identity: Identity, msg: bytes, src: Endpoint, now: float) -> None:
        response = parse_response(msg)
        if response is None:
            self.drops[Drop.MALFORMED] += 1
            return
        entry = self._index.get(response.receiver)
        if entry is None or entry.keypair is not None:  # only a pending initiation gets one
            self.drops[Drop.UNKNOWN_INDEX] += 1
            return
        peer = entry.peer
        keys = peer.handshake.consume_response(identity, response)
        del self._index[response.receiver]
        peer.rx_bytes += len(msg)
        self._received_authenticated(peer, src, now)
        self._install(peer, Keypair(keys, now, self.transport, peer.order), now)
        self._handshake_complete(peer, now)
        self._send_keepalive(peer, now)  # confirms the session to the responder

    def _install(self, peer: Peer, kp: Keypair, now: float) -> None:
        for old in peer.keypairs.install(kp):
            self._drop_keypair(old)
        self._index[kp.local_index] = IndexEntry(peer, kp)
        self._transport_dirty.add(peer)
        if self.sessions is not None:
            self.sessions.keep(peer.public_key, kp)
            self.sessions.arrange(peer.keypairs)
        peer.timers.zero_key_material = now + ZERO_KEYS_AFTER

    def _handshake_complete(self, peer: Peer, now: float) -> None:
        timers = peer.timers
        timers.retransmit_handshake = None
        timers.handshake_attempts = 0
        timers.sent_last_minute_handshake = False
        peer.last_handshake = now
        self.counters["handshakes_completed"] += 1

    # ---- the transport's per-packet path ---------------------------------------------------

    def take_transport_peers(self) -> tuple[set[Peer], list[int]]:
        """Peers whose send state changed, and the orders of peers removed, since the last
        call; the driver pushes them into the transport's peer table."""
        dirty, removed = self._transport_dirty, self._transport_removed
        self._transport_dirty, self._transport_removed = set(), []
        return dirty, removed

    def routes(self) -> list[tuple[bytes, int, int]]:
        """Every allowed-IPs prefix as (raw network address, prefix length, peer order)."""
        return [
            (network.network_address.packed, network.prefixlen, peer.order)
            for peer, networks in self._allowed.items()
            for network in networks
        ]

    def apply_transport_activity(
        self, activity: Sequence[tuple[int, int, int, int, int]], now: float
    ) -> None:
        """What the transport's batches did to each session since the last call, applied
        as the per-packet path here would have: figures, roaming, timers, rekeying."""
        for local, rx_packets, rx_bytes, tx_packets, tx_bytes in activity:
            entry = self._index.get(local)
            kp = None if entry is None else entry.keypair
            if entry is None or kp is None:
                continue  # removed since (its figures go with it)
            peer = entry.peer
            if rx_packets:
                kp.keep_window()  # a kept session's window, once per batch
                self._keep_key_fresh_receiving(peer, kp, now)
                if peer.endpoint is not None:
                    self._received_authenticated(peer, peer.endpoint, now)
                peer.rx_bytes += rx_bytes
                peer.rx_packets += rx_packets
                self._received_data(peer, rx_packets, now)
            if tx_packets:
                self._sent_transport(peer, kp, tx_bytes, now, data=True, packets=tx_packets)

    # ---- timers ----------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """When `tick` must next run (monotonic seconds), or None if nothing is pending.
        O(1) unless stale heap entries are discarded on the way (timers.py)."""
        return self._timers.next_deadline()

    def tick(self, now: float) -> None:
        """Run every timer due at `now`; anything to send goes to the outbox. Peers run in
        the order they were added (handshake jitter and indices come from the rng in that
        order); a peer's due timers run in TIMER_NAMES order. Costs nothing per idle peer."""
        due = self._timers.pop_due(now)
        if len(due) > 1:
            due.sort(key=_peer_order)
        for peer in due:
            for name in expired(peer.timers, now):
                getattr(self, f"_on_{name}")(peer, now)

    def _on_retransmit_handshake(self, peer: Peer, now: float) -> None:
        timers = peer.timers
        if timers.handshake_attempts > MAX_TIMER_HANDSHAKES:
            timers.send_keepalive = None
            self.drops[Drop.HANDSHAKE_GAVE_UP] += len(peer.staged)
            peer.staged.clear()
            self._forget_handshake(peer)
            self.counters["handshakes_gave_up"] += 1
            if timers.zero_key_material is None:
                timers.zero_key_material = now + ZERO_KEYS_AFTER
            return
        timers.handshake_attempts += 1
        self._initiate(peer, now, retry=True)

    def _on_send_keepalive(self, peer: Peer, now: float) -> None:
        self._send_keepalive(peer, now)
        if peer.timers.need_another_keepalive:
            peer.timers.need_another_keepalive = False
            peer.timers.send_keepalive = now + KEEPALIVE_TIMEOUT

    def _on_new_handshake(self, peer: Peer, now: float) -> None:
        self._initiate(peer, now, retry=False)

    def _on_zero_key_material(self, peer: Peer, now: float) -> None:
        self._end_sessions(peer)
        self.counters["keys_zeroed"] += 1

    def _on_persistent_keepalive(self, peer: Peer, now: float) -> None:
        if peer.persistent_keepalive:
            self._send_keepalive(peer, now)
