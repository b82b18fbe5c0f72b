"""Protocol constants (WireGuard paper section 5-6, wireguard-go device/constants.go)."""

from __future__ import annotations

import hashlib
from typing import Final

CONSTRUCTION: Final = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
IDENTIFIER: Final = b"WireGuard v1 zx2c4 Jason@zx2c4.com"
LABEL_MAC1: Final = b"mac1----"
LABEL_COOKIE: Final = b"cookie--"

INITIAL_CHAIN_KEY: Final = hashlib.blake2s(CONSTRUCTION).digest()
INITIAL_HASH: Final = hashlib.blake2s(INITIAL_CHAIN_KEY + IDENTIFIER).digest()

MESSAGE_INITIATION: Final = 1
MESSAGE_RESPONSE: Final = 2
MESSAGE_COOKIE_REPLY: Final = 3
MESSAGE_TRANSPORT: Final = 4
HANDSHAKE_MESSAGES: Final = frozenset((MESSAGE_INITIATION, MESSAGE_RESPONSE, MESSAGE_COOKIE_REPLY))

INITIATION_SIZE: Final = 148
RESPONSE_SIZE: Final = 92
COOKIE_REPLY_SIZE: Final = 64
TRANSPORT_HEADER_SIZE: Final = 16
TAG_SIZE: Final = 16
# What encryption adds to a packet; a keepalive is a transport message with no packet.
TRANSPORT_OVERHEAD: Final = TRANSPORT_HEADER_SIZE + TAG_SIZE
KEEPALIVE_SIZE: Final = TRANSPORT_OVERHEAD
# Largest datagram we accept: an IP packet can be at most 65535 bytes, padded to 16.
MAX_TRANSPORT_SIZE: Final = TRANSPORT_HEADER_SIZE + 65536 + TAG_SIZE
KEY_SIZE: Final = 32
TIMESTAMP_SIZE: Final = 12
COOKIE_SIZE: Final = 16
COOKIE_NONCE_SIZE: Final = 24
PADDING_MULTIPLE: Final = 16

REKEY_AFTER_MESSAGES: Final = 1 << 60
REJECT_AFTER_MESSAGES: Final = (1 << 64) - (1 << 13) - 1
REKEY_AFTER_TIME: Final = 120.0
REJECT_AFTER_TIME: Final = 180.0
REKEY_ATTEMPT_TIME: Final = 90.0
REKEY_TIMEOUT: Final = 5.0
REKEY_TIMEOUT_JITTER_MAX: Final = 0.334
KEEPALIVE_TIMEOUT: Final = 10.0
MAX_TIMER_HANDSHAKES: Final = int(REKEY_ATTEMPT_TIME / REKEY_TIMEOUT)
ZERO_KEYS_AFTER: Final = REJECT_AFTER_TIME * 3
COOKIE_REFRESH_TIME: Final = 120.0
HANDSHAKE_INITIATION_RATE: Final = 0.020
UNDER_LOAD_AFTER_TIME: Final = 1.0
# wireguard-go: under load when its 1024-deep handshake queue is 1/8 full.
DEFAULT_UNDER_LOAD_THRESHOLD: Final = 128
# Under load, all cookie replies together are limited to protect the outgoing link (64 bytes
# each: 20,000 a second is 10 Mbit/s); besides, each flow (address and port) gets them at the
# rate limiter's 20/s. Never per address: a flooder sharing a client's address (one NAT)
# must not spend the client's cookies. wireguard-go does not limit them at all.
COOKIE_REPLIES_PER_SECOND: Final = 20_000
COOKIE_REPLIES_BURST: Final = 1_000

MAX_STAGED_PACKETS: Final = 128
MAX_OUTBOX: Final = 4096
