"""The state changes one gateway streams to its standby, as msgpack (sans-I/O).

A change names one piece of state by its identity (`key()`): a newer change with the same
identity replaces an older one not yet sent, so what waits to be sent is bounded by the
state itself, never by how often it changes. Times are ages (seconds before the batch was
encoded), not clock readings: the two hosts' monotonic clocks have nothing in common.

Every field is bounded by its type; `decode_batch` raises `MalformedChange` on anything
else, which the channel counts as a drop.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

Key = Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]
U32 = Annotated[int, msgspec.Meta(ge=0, le=2**32 - 1)]
U64 = Annotated[int, msgspec.Meta(ge=0)]  # msgpack itself holds no more than 2**64 - 1
Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]
Address = Annotated[bytes, msgspec.Meta(min_length=4, max_length=16)]
Age = Annotated[float, msgspec.Meta(ge=0.0, le=1e9)]
MAX_CHANGES = 4096  # per batch; a batch stays well under MAX_BATCH_BYTES
MAX_BATCH_BYTES = 1 << 20


class MalformedChange(ValueError):
    """A batch that does not decode to changes (counted by the channel, never raised out)."""


class Session(msgspec.Struct, frozen=True, tag="s", array_like=True):
    """An established session: what SessionTable keeps, `send_limit` the end of the block
    of send counters the active has reserved (it never sends at or past it)."""

    peer: Key
    local_index: U32
    remote_index: U32
    send_key: Key
    recv_key: Key
    is_initiator: bool
    position: Annotated[int, msgspec.Meta(ge=0, le=2)]
    age: Age
    send_limit: U64

    def key(self) -> tuple[str, int]:
        return ("s", self.local_index)

    def __repr__(self) -> str:  # never the keys
        return f"Session(local={self.local_index}, limit={self.send_limit})"


class SessionGone(msgspec.Struct, frozen=True, tag="s-", array_like=True):
    local_index: U32

    def key(self) -> tuple[str, int]:
        return ("s", self.local_index)


class PeerEndpoint(msgspec.Struct, frozen=True, tag="e", array_like=True):
    peer: Key
    address: Address
    port: Port

    def key(self) -> tuple[str, bytes]:
        return ("e", self.peer)


class HandshakeTimestamp(msgspec.Struct, frozen=True, tag="t", array_like=True):
    """The greatest TAI64N timestamp accepted from a peer (initiation replay protection)."""

    peer: Key
    timestamp: Annotated[bytes, msgspec.Meta(min_length=12, max_length=12)]

    def key(self) -> tuple[str, bytes]:
        return ("t", self.peer)


Protocol = Annotated[int, msgspec.Meta(ge=0, le=255)]


class NatFlow(msgspec.Struct, frozen=True, array_like=True):
    """A translated flow as the peer sees it: the NAT table's inside key."""

    peer: Key
    protocol: Protocol
    source: Address
    source_port: Port
    proxy: Address
    destination_port: Port


class NatEntry(msgspec.Struct, frozen=True, tag="n", array_like=True):
    """One translated flow (gateway/nat/table.py): the inside key and the outside key."""

    flow: NatFlow
    outside_protocol: Protocol
    real: Address
    real_port: Port
    outside_source: Address
    outside_port: Port
    ttl: Age  # seconds left
    confirmed: bool

    def key(self) -> tuple[str, NatFlow]:
        return ("n", self.flow)


class NatGone(msgspec.Struct, frozen=True, tag="n-", array_like=True):
    flow: NatFlow

    def key(self) -> tuple[str, NatFlow]:
        return ("n", self.flow)


V4 = Annotated[bytes, msgspec.Meta(min_length=4, max_length=4)]
V6 = Annotated[bytes, msgspec.Meta(min_length=16, max_length=16)]
MAX_REAL_ADDRESSES = 16  # as gateway.nat.handler's (a test checks they agree)


class DnsMapping(msgspec.Struct, frozen=True, tag="d", array_like=True):
    """A DNS resource's proxy mapping, as the DNS process sends it (dataplane/mappings.py):
    the resource's index in the config, the proxy pair and the real addresses."""

    resource: Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
    proxy_v4: V4
    proxy_v6: V6
    real_v4: Annotated[tuple[V4, ...], msgspec.Meta(max_length=MAX_REAL_ADDRESSES)]
    real_v6: Annotated[tuple[V6, ...], msgspec.Meta(max_length=MAX_REAL_ADDRESSES)]

    def key(self) -> tuple[str, bytes]:
        return ("d", self.proxy_v4)


class ResyncDone(msgspec.Struct, frozen=True, tag="r", array_like=True):
    """Ends a full resync: state the standby holds that the resync did not name is gone."""

    def key(self) -> tuple[str]:
        return ("r",)


Change = (
    Session
    | SessionGone
    | PeerEndpoint
    | HandshakeTimestamp
    | NatEntry
    | NatGone
    | DnsMapping
    | ResyncDone
)


class Batch(msgspec.Struct, frozen=True, array_like=True):
    """What one channel message carries: the sender's clock age anchor and changes."""

    sent_at: float  # the sender's wall clock (replication lag = receiver's now - sent_at)
    changes: Annotated[list[Change], msgspec.Meta(max_length=MAX_CHANGES)]


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Batch)


def encode_batch(batch: Batch) -> bytes:
    return _encoder.encode(batch)


def decode_batch(data: bytes) -> Batch:
    if len(data) > MAX_BATCH_BYTES:
        raise MalformedChange(f"batch of {len(data)} bytes")
    try:
        return _decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise MalformedChange(str(exc)[:120]) from None
