"""Messages between the supervisor and the crypto process over their control socketpair.

Supervisor -> crypto: `Reload` (the config the supervisor parsed: apply its peers),
`ListenPortChanged` (the UDP process now listens on this port, for `wg show`) and
`MtuChanged` (the TUN device's MTU changed, e.g. with `ip link`: pad to the new one).
Crypto -> supervisor: `ListenPortRequest` (`wg set listen-port`: bind this port and move the
UDP process onto it; only the supervisor owns the socket) and `ReloadDone` (reload N is
applied, or could not be: the supervisor orders what follows a reload by it).

Each message is one SOCK_SEQPACKET record: a msgpack map tagged with the message type, at
most MAX_MESSAGE_BYTES. The receiver logs a malformed record (or one meant for the other
side) and goes on with the next: a bad message is never a crash.

A reload's config is parsed once, by the supervisor (`send_reload`): the parsed
`GatewayConfig`, pickled into a sealed memfd, travels with the `Reload` record
(SCM_RIGHTS) with its size and SHA-256; the crypto process checks both before it unpickles
(`receive_to_crypto` gives a `ConfigArrived`). So the two processes apply the same config even
if the file changes meanwhile, and host names are resolved once. Pickle is safe here: only
the supervisor and its forked children hold the socketpair, and the supervisor is the
process that already gave the crypto process its keys.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import pickle
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Annotated, TypeVar

import msgspec

from gateway.config import GatewayConfig

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 256  # every message is far smaller; a longer record is cut and rejected

Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]
Mtu = Annotated[int, msgspec.Meta(ge=68, le=65535)]  # what Linux allows a device


class Reload(msgspec.Struct, frozen=True, tag="reload"):
    """Supervisor -> crypto: reload number `generation`; the config (pickled: `size` bytes
    with this SHA-256 `digest`) is in the memfd sent with this record."""

    generation: int
    size: int
    digest: bytes


class ReloadDone(msgspec.Struct, frozen=True, tag="reload_done"):
    """Crypto -> supervisor: reload `generation` is applied (`applied`: the peer figures are
    copied to the stats segment, so READY=1 and the STATUS= line count the new peers), or
    its config could not be read (the supervisor then restarts the crypto process from it)."""

    generation: int
    applied: bool


class ListenPortChanged(msgspec.Struct, frozen=True, tag="listen_port_changed"):
    """Supervisor -> crypto: the UDP process now listens on `port`."""

    port: Port


class MtuChanged(msgspec.Struct, frozen=True, tag="mtu_changed"):
    """Supervisor -> crypto: the TUN device's MTU is now `mtu` (the padding follows it)."""

    mtu: Mtu


class ListenPortRequest(msgspec.Struct, frozen=True, tag="listen_port_request"):
    """Crypto -> supervisor: `wg` asked to listen on `port` (0: any free port)."""

    port: Port


ToCrypto = Reload | ListenPortChanged | MtuChanged
ToSupervisor = ListenPortRequest | ReloadDone
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
    for message, fd in _receive(sock, decode):
        if fd is not None:
            os.close(fd)  # only a Reload carries one, and only the crypto process reads it
        yield message


@dataclass(frozen=True, slots=True)
class ConfigArrived:
    """A `Reload` as the crypto process receives it: its config, or None if unreadable."""

    generation: int
    config: GatewayConfig | None


CryptoEvent = ConfigArrived | ListenPortChanged | MtuChanged


def receive_to_crypto(sock: socket.socket) -> Iterator[CryptoEvent]:
    """The supervisor's messages waiting on the crypto end, a Reload's config read."""
    for message, fd in _receive(sock, decode_to_crypto):
        if isinstance(message, Reload):
            yield ConfigArrived(message.generation, _read_config(message, fd))
        else:
            if fd is not None:
                os.close(fd)
            yield message


def send_reload(sock: socket.socket, generation: int, config: GatewayConfig) -> None:
    """Send reload `generation` with its parsed config (raises OSError, as send_message)."""
    payload = pickle.dumps(config, protocol=pickle.HIGHEST_PROTOCOL)
    fd = os.memfd_create("fzgw-config", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        with os.fdopen(os.dup(fd), "wb") as handle:
            handle.write(payload)
        fcntl.fcntl(
            fd,
            fcntl.F_ADD_SEALS,
            fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE,
        )
        message = Reload(generation, len(payload), hashlib.sha256(payload).digest())
        socket.send_fds(sock, [encode(message)], [fd])
    finally:
        os.close(fd)


def _read_config(message: Reload, fd: int | None) -> GatewayConfig | None:
    """The config of `message` from its memfd, checked against its size and digest."""
    if fd is None:
        log.error("reload %d came without its config", message.generation)
        return None
    try:
        with os.fdopen(fd, "rb") as handle:
            handle.seek(0)  # the sender's writes moved the offset, which a passed fd shares
            payload = handle.read(message.size + 1)
    except OSError as exc:
        log.error("reload %d: cannot read its config: %s", message.generation, exc)
        return None
    if len(payload) != message.size or hashlib.sha256(payload).digest() != message.digest:
        log.error("reload %d: its config is not what the supervisor sent", message.generation)
        return None
    config = pickle.loads(payload)  # noqa: S301 - from the supervisor only, checked above
    if not isinstance(config, GatewayConfig):
        log.error("reload %d: not a config: %s", message.generation, type(config).__name__)
        return None
    return config


def _receive(sock: socket.socket, decode: Callable[[bytes], T]) -> Iterator[tuple[T, int | None]]:
    """(message, the fd sent with it) for each valid record; malformed ones logged, skipped."""
    while True:
        try:
            data, fds, _flags, _address = socket.recv_fds(sock, MAX_MESSAGE_BYTES, 1)
        except BlockingIOError:
            return
        if not data:
            for extra in fds:
                os.close(extra)
            return  # nothing we send is empty: an empty record (or EOF) ends this batch
        fd = fds[0] if fds else None
        try:
            message = decode(data)
        except ControlError as exc:
            log.error("ignored a control message: %s", exc)
            if fd is not None:
                os.close(fd)
            continue
        yield message, fd
