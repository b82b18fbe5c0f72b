"""The 36-byte endpoint header in front of every datagram in the UDP <-> crypto rings.

Layout: family (1 byte: 4 or 6), one pad byte, port (2 bytes, big endian), remote address
(16 bytes), local address (16 bytes); an IPv4 address fills the first 4 of its 16. The
remote is the sender of a received datagram or the destination of one to send; the local
address is where a received datagram arrived, or the source to send from (all zero: none
known, the kernel chooses). Both share the family: an IPv4 datagram arrives at an IPv4
address, also on the dual-stack socket. A header with a local address decodes to a
`StickyEndpoint`, and a `StickyEndpoint` encodes to the header it came in with, so replies
leave from the address their request arrived at.

Encodings are cached because a gateway talks to a few endpoints many times; the caches are
bounded so a flood of spoofed sources cannot grow them.
"""

from __future__ import annotations

import socket
import struct

from gateway.endpoint import Endpoint, StickyEndpoint

HEADER_SIZE = 36
_HEADER = struct.Struct("!BxH16s16s")
_CACHE_MAX = 4096
_IPV4 = 4
_IPV6 = 6

_encoded: dict[Endpoint, bytes] = {}
_decoded: dict[bytes, Endpoint] = {}


class FramingError(ValueError):
    """A ring message too short for its header or with an unknown address family."""


def encode_endpoint(endpoint: Endpoint) -> bytes:
    """The header for `endpoint`, with its local address when it is a StickyEndpoint."""
    if type(endpoint) is StickyEndpoint:
        header = endpoint.ring_header
        if header is None:
            header = endpoint.ring_header = _pack(endpoint, endpoint.local)
        return header
    header = _encoded.get(endpoint)
    if header is None:
        header = _pack(endpoint, b"")
        if len(_encoded) >= _CACHE_MAX:
            _encoded.clear()
        _encoded[endpoint] = header
    return header


def _pack(endpoint: Endpoint, local: bytes) -> bytes:
    host, port = endpoint
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return _HEADER.pack(
        _IPV6 if family == socket.AF_INET6 else _IPV4,
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
        if family == _IPV4:
            host = socket.inet_ntop(socket.AF_INET, raw[:4])
            local = local[:4]
        elif family == _IPV6:
            host = socket.inet_ntop(socket.AF_INET6, raw)
        else:
            raise FramingError(f"unknown address family {family} in ring message")
        if any(local):
            endpoint = StickyEndpoint(host, port, local)
            endpoint.ring_header = key
        else:
            endpoint = (host, port)
        if len(_decoded) >= _CACHE_MAX:
            _decoded.clear()
        _decoded[key] = endpoint
    return endpoint
