"""Wire layouts of the four WireGuard messages: parse (None for malformed) and build.

Parsers check the exact size and the three reserved zero bytes after the type; anything
else is malformed and the caller counts it as a drop.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from gateway.wireguard.constants import (
    COOKIE_REPLY_SIZE,
    INITIATION_SIZE,
    MESSAGE_COOKIE_REPLY,
    MESSAGE_INITIATION,
    MESSAGE_RESPONSE,
    RESPONSE_SIZE,
)

Buffer = bytes | bytearray | memoryview

_INITIATION = struct.Struct("<II32s48s28s16s16s")
_RESPONSE = struct.Struct("<III32s16s16s16s")
_COOKIE_REPLY = struct.Struct("<II24s32s")
TRANSPORT_HEADER = struct.Struct("<IIQ")

_TYPE_FIELD = 4
INITIATION_MAC1_END = 116
INITIATION_MAC2_END = 132
RESPONSE_MAC1_END = 60
RESPONSE_MAC2_END = 76


def message_type(data: Buffer) -> int:
    """The message type, or 0 when the 4-byte type field is missing or not of the form t,0,0,0."""
    if len(data) < _TYPE_FIELD or data[1] or data[2] or data[3]:
        return 0
    return data[0]


@dataclass(slots=True)
class Initiation:
    sender: int
    ephemeral: bytes
    encrypted_static: bytes
    encrypted_timestamp: bytes
    mac1: bytes
    mac2: bytes


@dataclass(slots=True)
class Response:
    sender: int
    receiver: int
    ephemeral: bytes
    encrypted_nothing: bytes
    mac1: bytes
    mac2: bytes


@dataclass(slots=True)
class CookieReply:
    receiver: int
    nonce: bytes
    encrypted_cookie: bytes


def parse_initiation(data: Buffer) -> Initiation | None:
    if len(data) != INITIATION_SIZE or message_type(data) != MESSAGE_INITIATION:
        return None
    _, sender, eph, static, ts, mac1, mac2 = _INITIATION.unpack(data)
    return Initiation(sender, eph, static, ts, mac1, mac2)


def parse_response(data: Buffer) -> Response | None:
    if len(data) != RESPONSE_SIZE or message_type(data) != MESSAGE_RESPONSE:
        return None
    _, sender, receiver, eph, nothing, mac1, mac2 = _RESPONSE.unpack(data)
    return Response(sender, receiver, eph, nothing, mac1, mac2)


def parse_cookie_reply(data: Buffer) -> CookieReply | None:
    if len(data) != COOKIE_REPLY_SIZE or message_type(data) != MESSAGE_COOKIE_REPLY:
        return None
    _, receiver, nonce, cookie = _COOKIE_REPLY.unpack(data)
    return CookieReply(receiver, nonce, cookie)


def build_initiation(sender: int, ephemeral: bytes, static: bytes, timestamp: bytes) -> bytearray:
    """An initiation with zero MACs; the cookie generator fills them in."""
    out = bytearray(INITIATION_SIZE)
    _INITIATION.pack_into(
        out, 0, MESSAGE_INITIATION, sender, ephemeral, static, timestamp, b"", b""
    )
    return out


def build_response(sender: int, receiver: int, ephemeral: bytes, nothing: bytes) -> bytearray:
    out = bytearray(RESPONSE_SIZE)
    _RESPONSE.pack_into(out, 0, MESSAGE_RESPONSE, sender, receiver, ephemeral, nothing, b"", b"")
    return out


def build_cookie_reply(receiver: int, nonce: bytes, encrypted_cookie: bytes) -> bytes:
    return _COOKIE_REPLY.pack(MESSAGE_COOKIE_REPLY, receiver, nonce, encrypted_cookie)
