"""The 36-byte endpoint header in front of every datagram in the UDP <-> crypto rings.

Layout: family (1 byte: 4 or 6), one pad byte, port (2 bytes, big endian), remote address
(16 bytes), local address (16 bytes); an IPv4 address fills the first 4 of its 16. The
remote is the sender of a received datagram or the destination of one to send; the local
address is where a received datagram arrived, or the source to send from (all zero: none
known, the kernel chooses). Both share the family: an IPv4 datagram arrives at an IPv4
address, also on the dual-stack socket. A header with a local address decodes to a
`StickyEndpoint`, and a `StickyEndpoint` encodes to the header it came in with, so replies
leave from the address their request arrived at.

This module is the one owner of the layout: the processes on either side of the rings frame
and unframe with `encode_message` / `decode_message`, ask `carries_handshake` and
`remote_address`, and never slice a header themselves.

Encodings are cached because a gateway talks to a few endpoints many times; the caches are
bounded so a flood of spoofed sources cannot grow them.
"""

from __future__ import annotations

import socket
import struct
from typing import TypeVar

from gateway.endpoint import Endpoint, StickyEndpoint
from gateway.wireguard.constants import HANDSHAKE_MESSAGES

HEADER_SIZE = 36
_HEADER = struct.Struct("!BxH16s16s")
_CACHE_MAX = 4096
# The header's family byte (not an IP version field, though the values match).
_FAMILY_IPV4 = 4
_FAMILY_IPV6 = 6
_REMOTE = slice(4, 20)  # the remote address's 16 bytes
_REMOTE_IPV4 = slice(4, 8)
_PORT = slice(2, 4)

_encoded: dict[Endpoint, bytes] = {}
# A StickyEndpoint hashes as its (host, port), so its headers are keyed with the local address.
_encoded_sticky: dict[tuple[Endpoint, bytes], bytes] = {}
_decoded: dict[bytes, Endpoint] = {}
_K = TypeVar("_K")
_V = TypeVar("_V")


class FramingError(ValueError):
    """A ring message too short for its header or with an unknown address family."""


def encode_endpoint(endpoint: Endpoint) -> bytes:
    """The header for `endpoint`, with its local address when it is a StickyEndpoint."""
    if type(endpoint) is StickyEndpoint:
        key = (endpoint, endpoint.local)
        header = _encoded_sticky.get(key)
        if header is None:
            header = _remember(_encoded_sticky, key, _pack(endpoint, endpoint.local))
        return header
    header = _encoded.get(endpoint)
    if header is None:
        header = _remember(_encoded, endpoint, _pack(endpoint, b""))
    return header


def encode_message(endpoint: Endpoint, datagram: bytes | bytearray | memoryview) -> bytes:
    """A ring message: the header for `endpoint`, then `datagram`."""
    return encode_endpoint(endpoint) + datagram


def decode_message(message: memoryview) -> tuple[Endpoint, memoryview]:
    """A ring message's endpoint (see decode_endpoint) and the datagram after the header."""
    return decode_endpoint(message), message[HEADER_SIZE:]


def carries_handshake(message: bytes | memoryview) -> bool:
    """Whether the datagram in a ring message is a handshake message (initiation, response
    or cookie reply), by its type byte alone."""
    return len(message) > HEADER_SIZE and message[HEADER_SIZE] in HANDSHAKE_MESSAGES


def remote_address(header: bytes | memoryview) -> bytes:
    """The remote's raw address (4 or 16 bytes) in a ring message's header."""
    return bytes(header[_REMOTE_IPV4] if header[0] == _FAMILY_IPV4 else header[_REMOTE])


def remote_port(header: bytes | memoryview) -> bytes:
    """The remote's port (2 bytes, network order) in a ring message's header: with
    remote_address, one flow's key."""
    return bytes(header[_PORT])


def _remember(cache: dict[_K, _V], key: _K, value: _V) -> _V:
    """Cache `value` under `key`; a full cache starts over (bounded under a flood)."""
    if len(cache) >= _CACHE_MAX:
        cache.clear()
    cache[key] = value
    return value


def _pack(endpoint: Endpoint, local: bytes) -> bytes:
    host, port = endpoint
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return _HEADER.pack(
        _FAMILY_IPV6 if family == socket.AF_INET6 else _FAMILY_IPV4,
        port,
        socket.inet_pton(family, host),
        local,  # struct pads an IPv4 address (or b"": none) with zeros to 16 bytes
    )


def decode_endpoint(message: bytes | memoryview) -> Endpoint:
    """The endpoint in the first HEADER_SIZE bytes of `message`: a StickyEndpoint when the
    header names a local address."""
    key = bytes(message[:HEADER_SIZE])
    endpoint = _decoded.get(key)
    if endpoint is None:
        if len(key) < HEADER_SIZE:
            raise FramingError(f"ring message of {len(key)} bytes has no endpoint header")
        family, port, raw, local = _HEADER.unpack(key)
        if family == _FAMILY_IPV4:
            host = socket.inet_ntop(socket.AF_INET, raw[:4])
            local = local[:4]
        elif family == _FAMILY_IPV6:
            host = socket.inet_ntop(socket.AF_INET6, raw)
        else:
            raise FramingError(f"unknown address family {family} in ring message")
        if any(local):
            endpoint = StickyEndpoint(host, port, local)
            _remember(_encoded_sticky, (endpoint, local), key)  # replies reuse these bytes
        else:
            endpoint = (host, port)
        _remember(_decoded, key, endpoint)
    return endpoint
