"""Messages between the supervisor and the crypto process over their control socketpair.

Supervisor -> crypto: `Reload` (re-read the config file, apply its peers),
`ListenPortChanged` (the UDP process now listens on this port, for `wg show`) and
`MtuChanged` (the TUN device's MTU changed, e.g. with `ip link`: pad to the new one).
Crypto -> supervisor: `ListenPortRequest` (`wg set listen-port`: bind this port and move the
UDP process onto it; only the supervisor owns the socket).

Each message is one SOCK_SEQPACKET record: a msgpack map tagged with the message type, at
most MAX_MESSAGE_BYTES. The receiver logs a malformed record (or one meant for the other
side) and goes on with the next: a bad message is never a crash.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Iterator
from typing import Annotated, TypeVar

import msgspec

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 256  # every message is far smaller; a longer record is cut and rejected

Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]
Mtu = Annotated[int, msgspec.Meta(ge=68, le=65535)]  # what Linux allows a device


class Reload(msgspec.Struct, frozen=True, tag="reload"):
    """Supervisor -> crypto: the config file changed; apply its peers."""


class ListenPortChanged(msgspec.Struct, frozen=True, tag="listen_port_changed"):
    """Supervisor -> crypto: the UDP process now listens on `port`."""

    port: Port


class MtuChanged(msgspec.Struct, frozen=True, tag="mtu_changed"):
    """Supervisor -> crypto: the TUN device's MTU is now `mtu` (the padding follows it)."""

    mtu: Mtu


class ListenPortRequest(msgspec.Struct, frozen=True, tag="listen_port_request"):
    """Crypto -> supervisor: `wg` asked to listen on `port` (0: any free port)."""

    port: Port


class Reloaded(msgspec.Struct, frozen=True, tag="reloaded"):
    """Crypto -> supervisor: a Reload is applied and the peer figures copied to the stats
    segment (the supervisor's READY=1 and STATUS= line then count the new peers)."""


ToCrypto = Reload | ListenPortChanged | MtuChanged
ToSupervisor = ListenPortRequest | Reloaded
ControlMessage = ToCrypto | ToSupervisor

T = TypeVar("T")


class ControlError(ValueError):
    """A control record that is not a message this side accepts (the text says why)."""


_encoder = msgspec.msgpack.Encoder()
_to_crypto: msgspec.msgpack.Decoder[ToCrypto] = msgspec.msgpack.Decoder(ToCrypto)
_to_supervisor: msgspec.msgpack.Decoder[ToSupervisor] = msgspec.msgpack.Decoder(ToSupervisor)


def encode(message: ControlMessage) -> bytes:
    return _encoder.encode(message)


def decode_to_crypto(data: bytes) -> ToCrypto:
    return _decode(_to_crypto, data)


def decode_to_supervisor(data: bytes) -> ToSupervisor:
    return _decode(_to_supervisor, data)


def _decode(decoder: msgspec.msgpack.Decoder[T], data: bytes) -> T:
    try:
        return decoder.decode(data)
    except msgspec.DecodeError as exc:  # ValidationError is a DecodeError too
        raise ControlError(f"malformed control message {data[:64]!r}: {exc}") from None


def send_message(sock: socket.socket, message: ControlMessage) -> None:
    """Send one message (raises OSError, e.g. when the other side's queue is full)."""
    sock.send(encode(message))


def receive_messages(sock: socket.socket, decode: Callable[[bytes], T]) -> Iterator[T]:
    """Every message waiting on the non-blocking socket; malformed ones are logged, skipped."""
    while True:
        try:
            data = sock.recv(MAX_MESSAGE_BYTES)
        except BlockingIOError:
            return
        if not data:
            return  # nothing we send is empty: an empty record (or EOF) ends this batch
        try:
            message = decode(data)
        except ControlError as exc:
            log.error("ignored a control message: %s", exc)
            continue
        yield message
