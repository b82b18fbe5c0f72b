"""Why a packet or datagram was dropped: the core's reasons and the metric label of each.

`Device.drops` counts `Drop` members. Each member names the `DropLabel` it is exported
under (`firezone_gw_drops_total{reason="<label>"}`), so a new reason is one line here and
mypy refuses it without a label. `DropLabel` lists every label in the order of the stats
segment's drop slots (gateway/telemetry/stats/layout.py derives them from it); the last six
are counted by the processes of the data plane, not by the core.
"""

from __future__ import annotations

from enum import Enum, StrEnum
from typing import NamedTuple


class DropLabel(StrEnum):
    MALFORMED = "malformed"  # too short, unknown message type, bad IP header
    MAC1_INVALID = "mac1_invalid"
    COOKIE_REQUIRED = "cookie_required"  # under load without a valid mac2
    RATE_LIMITED = "rate_limited"
    UNKNOWN_RECEIVER = "unknown_receiver"  # a session index or peer we do not have
    DECRYPT_FAILED = "decrypt_failed"
    REPLAY = "replay"
    NO_SESSION = "no_session"  # plaintext for a peer without a usable session
    ALLOWED_IPS = "allowed_ips"  # decrypted source not in the peer's allowed IPs
    NO_ROUTE = "no_route"  # plaintext destination matches no peer
    POLICY = "policy"
    RING_FULL = "ring_full"
    TOO_BIG = "too_big"
    TUN_WRITE_FAILED = "tun_write_failed"
    UDP_SEND_FAILED = "udp_send_failed"
    ROUTING_HEADER = "routing_header"  # IPv6 with segments left (the crypto's firewall)


class _Reason(NamedTuple):
    key: str
    label: DropLabel


class Drop(Enum):
    """A reason the core drops something; `key` is its name in logs, `label` its metric."""

    MALFORMED = _Reason("malformed", DropLabel.MALFORMED)
    MALFORMED_PACKET = _Reason("malformed_packet", DropLabel.MALFORMED)  # from the TUN
    MALFORMED_INNER = _Reason("malformed_inner", DropLabel.MALFORMED)  # decrypted packet
    BAD_COOKIE_REPLY = _Reason("bad_cookie_reply", DropLabel.MALFORMED)
    HANDSHAKE_FAILED = _Reason("handshake_failed", DropLabel.MALFORMED)
    BAD_MAC1 = _Reason("bad_mac1", DropLabel.MAC1_INVALID)
    UNDER_LOAD_COOKIE = _Reason("under_load_cookie", DropLabel.COOKIE_REQUIRED)
    RATE_LIMITED = _Reason("rate_limited", DropLabel.RATE_LIMITED)
    UNKNOWN_INDEX = _Reason("unknown_index", DropLabel.UNKNOWN_RECEIVER)
    UNKNOWN_PEER = _Reason("unknown_peer", DropLabel.UNKNOWN_RECEIVER)
    DECRYPT_FAILED = _Reason("decrypt_failed", DropLabel.DECRYPT_FAILED)
    EXPIRED_KEYPAIR = _Reason("expired_keypair", DropLabel.NO_SESSION)
    REPLAY = _Reason("replay", DropLabel.REPLAY)
    # An initiation no newer than the last one.
    REPLAYED_TIMESTAMP = _Reason("replayed_timestamp", DropLabel.REPLAY)
    # A second initiation within 20 ms.
    HANDSHAKE_FLOOD = _Reason("handshake_flood", DropLabel.RATE_LIMITED)
    SPOOFED_SOURCE = _Reason("spoofed_source", DropLabel.ALLOWED_IPS)
    NO_PEER_FOR_DESTINATION = _Reason("no_peer_for_destination", DropLabel.NO_ROUTE)
    NO_ENDPOINT = _Reason("no_endpoint", DropLabel.NO_SESSION)
    STAGED_OVERFLOW = _Reason("staged_overflow", DropLabel.NO_SESSION)
    HANDSHAKE_GAVE_UP = _Reason("handshake_gave_up", DropLabel.NO_SESSION)
    NO_PRIVATE_KEY = _Reason("no_private_key", DropLabel.NO_SESSION)
    OUTBOX_OVERFLOW = _Reason("outbox_overflow", DropLabel.RING_FULL)

    @property
    def label(self) -> DropLabel:
        return self.value.label

    def __str__(self) -> str:
        return self.value.key
