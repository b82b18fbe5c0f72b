"""Proxy mappings from the DNS process to the crypto process, and their acknowledgements.

The supervisor makes a SOCK_SEQPACKET socketpair before it forks the two. Each mapping is one
record: a msgpack `MappingMessage` (a sequence number, the resource's index in the config,
the proxy pair, at most MAX_REAL_ADDRESSES real addresses per family). The crypto process
applies it to its ProxyHandler and answers with the sequence number (8 bytes, big-endian).
The DNS process sends the DNS answer only after that acknowledgement, or after ACK_TIMEOUT
(counted), so a peer's first packet to a proxy address already finds its translation: the
crypto process looks at this socket every few milliseconds even under traffic
(cryptoproc.run_crypto). A malformed record is logged and skipped on either side.
"""

from __future__ import annotations

import ipaddress
import logging
import select
import socket
import time
from collections.abc import Callable
from typing import Annotated

import msgspec

from gateway.dns.resources import ProxyMapping
from gateway.nat.handler import MAX_REAL_ADDRESSES, ProxyHandler, Target

log = logging.getLogger(__name__)

ACK_TIMEOUT = 0.5  # seconds the DNS process waits before answering anyway
MAX_MESSAGE_BYTES = 2048  # a full message is about 400 bytes
ACK_BYTES = 8

V4 = Annotated[bytes, msgspec.Meta(min_length=4, max_length=4)]
V6 = Annotated[bytes, msgspec.Meta(min_length=16, max_length=16)]
Count = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]


class MappingMessage(msgspec.Struct, frozen=True):
    sequence: Count
    resource: Count
    proxy_v4: V4
    proxy_v6: V6
    real_v4: Annotated[tuple[V4, ...], msgspec.Meta(max_length=MAX_REAL_ADDRESSES)]
    real_v6: Annotated[tuple[V6, ...], msgspec.Meta(max_length=MAX_REAL_ADDRESSES)]


class MappingPair:
    """The socketpair, made by the supervisor before it forks the DNS and crypto processes."""

    def __init__(self, dns: socket.socket, crypto: socket.socket) -> None:
        self.dns = dns
        self.crypto = crypto

    @classmethod
    def create(cls) -> MappingPair:
        dns, crypto = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        dns.setblocking(False)
        crypto.setblocking(False)
        return cls(dns, crypto)

    def close(self) -> None:
        self.dns.close()
        self.crypto.close()


_encoder = msgspec.msgpack.Encoder()
_decoder: msgspec.msgpack.Decoder[MappingMessage] = msgspec.msgpack.Decoder(MappingMessage)


def encode(sequence: int, mapping: ProxyMapping) -> bytes:
    return _encoder.encode(
        MappingMessage(
            sequence=sequence,
            resource=mapping.resource,
            proxy_v4=mapping.proxies.v4.packed,
            proxy_v6=mapping.proxies.v6.packed,
            real_v4=tuple(a.packed for a in mapping.real_v4[:MAX_REAL_ADDRESSES]),
            real_v6=tuple(a.packed for a in mapping.real_v6[:MAX_REAL_ADDRESSES]),
        )
    )


class MappingSender:
    """The DNS process's end: send a mapping, wait (bounded) until it is applied."""

    def __init__(self, sock: socket.socket, *, timeout: float = ACK_TIMEOUT) -> None:
        sock.setblocking(False)
        self._sock = sock
        self._timeout = timeout
        self._sequence = 0
        self._poll = select.poll()
        self._poll.register(sock, select.POLLIN)
        self.unacknowledged = 0  # mappings answered without an acknowledgement

    def send(self, mapping: ProxyMapping) -> bool:
        """True once the crypto process applied it; False after the timeout or an error."""
        self._sequence += 1
        try:
            self._sock.send(encode(self._sequence, mapping))
        except OSError as exc:
            log.warning("proxy mapping not sent to the crypto process: %s", exc)
            self.unacknowledged += 1
            return False
        deadline = time.monotonic() + self._timeout
        while (left := deadline - time.monotonic()) > 0:
            if not self._poll.poll(left * 1000):
                break
            try:
                ack = self._sock.recv(ACK_BYTES)
            except BlockingIOError:
                continue
            except OSError:
                break
            if not ack:
                break  # the crypto process is gone; the next one starts without mappings
            # An older sequence: a late acknowledgement of a mapping that timed out.
            if int.from_bytes(ack, "big") >= self._sequence:
                return True
        self.unacknowledged += 1
        return False


def apply_message(handler: ProxyHandler, message: MappingMessage) -> None:
    handler.apply(
        ipaddress.IPv4Address(message.proxy_v4),
        ipaddress.IPv6Address(message.proxy_v6),
        Target(
            message.resource,
            tuple(ipaddress.IPv4Address(a) for a in message.real_v4),
            tuple(ipaddress.IPv6Address(a) for a in message.real_v6),
        ),
    )


def receive_mappings(sock: socket.socket, apply: Callable[[MappingMessage], None]) -> int:
    """The crypto process's end: apply every waiting mapping, acknowledge each; returns how
    many were applied."""
    applied = 0
    while True:
        try:
            data = sock.recv(MAX_MESSAGE_BYTES)
        except BlockingIOError:
            return applied
        if not data:
            return applied
        try:
            message = _decoder.decode(data)
        except msgspec.DecodeError as exc:
            log.error("ignored a proxy mapping record: %s", exc)
            continue
        apply(message)
        applied += 1
        try:
            sock.send(message.sequence.to_bytes(ACK_BYTES, "big"))
        except OSError as exc:  # the DNS process answers after its timeout
            log.warning("proxy mapping not acknowledged: %s", exc)
