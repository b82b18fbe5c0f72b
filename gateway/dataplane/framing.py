"""The 20-byte endpoint header in front of every datagram in the UDP <-> crypto rings.

Layout: family (1 byte: 4 or 6), one pad byte, port (2 bytes, big endian), address (16 bytes;
an IPv4 address fills the first 4). Encodings are cached because a gateway talks to a few
endpoints many times; the caches are bounded so a flood of spoofed sources cannot grow them.
"""

from __future__ import annotations

import socket
import struct

from gateway.endpoint import Endpoint

HEADER_SIZE = 20
_HEADER = struct.Struct("!BxH16s")
_CACHE_MAX = 4096

_encoded: dict[Endpoint, bytes] = {}
_decoded: dict[bytes, Endpoint] = {}


class FramingError(ValueError):
    """A ring message too short for its header or with an unknown address family."""


def encode_endpoint(endpoint: Endpoint) -> bytes:
    header = _encoded.get(endpoint)
    if header is None:
        host, port = endpoint
        if ":" in host:
            header = _HEADER.pack(6, port, socket.inet_pton(socket.AF_INET6, host))
        else:
            header = _HEADER.pack(4, port, socket.inet_pton(socket.AF_INET, host))
        if len(_encoded) >= _CACHE_MAX:
            _encoded.clear()
        _encoded[endpoint] = header
    return header


def decode_endpoint(message: bytes | memoryview) -> Endpoint:
    """The endpoint in the first HEADER_SIZE bytes of `message`."""
    key = bytes(message[:HEADER_SIZE])
    endpoint = _decoded.get(key)
    if endpoint is None:
        if len(key) < HEADER_SIZE:
            raise FramingError(f"ring message of {len(key)} bytes has no endpoint header")
        family, port, raw = _HEADER.unpack(key)
        if family == 4:  # noqa: PLR2004 - the IP version is the natural tag
            host = socket.inet_ntop(socket.AF_INET, raw[:4])
        elif family == 6:  # noqa: PLR2004 - the IP version is the natural tag
            host = socket.inet_ntop(socket.AF_INET6, raw)
        else:
            raise FramingError(f"unknown address family {family} in ring message")
        endpoint = (host, port)
        if len(_decoded) >= _CACHE_MAX:
            _decoded.clear()
        _decoded[key] = endpoint
    return endpoint
