"""The replication channel: batches round-trip; forged, replayed, reflected and malformed
messages are refused and counted; the outbox coalesces and bounds its rate; a resync
replaces the mirror's state."""

from __future__ import annotations

import nacl.public
from hypothesis import given
from hypothesis import strategies as st

from gateway.ha import codec
from gateway.ha.channel import Channel
from gateway.ha.codec import (
    Batch,
    DnsMapping,
    HandshakeTimestamp,
    NatEntry,
    NatFlow,
    NatGone,
    PeerEndpoint,
    ResyncDone,
    Session,
    SessionGone,
    decode_batch,
    encode_batch,
)
from gateway.ha.mirror import TAKEOVER_JUMP, Mirror, takeover_limit
from gateway.ha.outbox import CHANGE_BYTES, Outbox
from gateway.nat import handler

A_KEY, B_KEY = nacl.public.PrivateKey.generate(), nacl.public.PrivateKey.generate()


def pair() -> tuple[Channel, Channel]:
    """Two ends of a connection, their HELLOs exchanged."""
    a = Channel(A_KEY, B_KEY.public_key)
    b = Channel(B_KEY, A_KEY.public_key)
    assert b.receive(a.hello()) == []
    assert a.receive(b.hello()) == []
    assert a.ready and b.ready
    return a, b


def session(index: int = 7, limit: int = 4096) -> Session:
    return Session(b"p" * 32, index, 9, b"s" * 32, b"r" * 32, True, 1, 3.5, limit)


keys = st.binary(min_size=32, max_size=32)
u32 = st.integers(0, 2**32 - 1)
port = st.integers(0, 65535)
addr = st.one_of(st.binary(min_size=4, max_size=4), st.binary(min_size=16, max_size=16))
age = st.floats(0, 1e9, allow_nan=False)
nat_flows = st.builds(NatFlow, keys, st.integers(0, 255), addr, port, addr, port)
changes = st.one_of(
    st.builds(
        Session,
        keys,
        u32,
        u32,
        keys,
        keys,
        st.booleans(),
        st.integers(0, 2),
        age,
        st.integers(0, 2**64 - 1),
    ),
    st.builds(SessionGone, u32),
    st.builds(PeerEndpoint, keys, addr, port),
    st.builds(HandshakeTimestamp, keys, st.binary(min_size=12, max_size=12)),
    st.builds(
        NatEntry,
        nat_flows,
        st.integers(0, 255),
        addr,
        port,
        addr,
        port,
        age,
        st.booleans(),
    ),
    st.builds(NatGone, nat_flows),
    st.builds(
        DnsMapping,
        st.integers(0, 2**63 - 1),
        st.binary(min_size=4, max_size=4),
        st.binary(min_size=16, max_size=16),
        st.lists(st.binary(min_size=4, max_size=4), max_size=16).map(tuple),
        st.lists(st.binary(min_size=16, max_size=16), max_size=16).map(tuple),
    ),
    st.just(ResyncDone()),
)


@given(st.lists(changes, max_size=20), st.floats(0, 2e9, allow_nan=False))
def test_batches_round_trip_through_codec_and_channel(items: list, sent_at: float) -> None:
    batch = Batch(sent_at, items)
    assert decode_batch(encode_batch(batch)) == batch
    a, b = pair()
    assert b.receive(a.seal(batch)) == [batch]
    assert not b.drops


def test_forged_message_is_refused_and_counted() -> None:
    a, b = pair()
    mallory = Channel(nacl.public.PrivateKey.generate(), B_KEY.public_key)
    mallory.peer_id = b.own_id  # even knowing the connection id
    assert b.receive(mallory.seal(Batch(0.0, [session()]))) == []
    frame = bytearray(a.seal(Batch(0.0, [session()])))
    frame[-1] ^= 1  # one bit changed in transit
    assert b.receive(bytes(frame)) == []
    assert b.drops["forged"] == 2


def test_replayed_and_reflected_messages_are_refused() -> None:
    a, b = pair()
    frame = a.seal(Batch(1.0, [session()]))
    assert len(b.receive(frame)) == 1
    assert b.receive(frame) == []  # the same message again
    assert b.drops["replayed"] == 1
    # The same message on a later connection (b's new id) is refused too.
    b2 = Channel(B_KEY, A_KEY.public_key)
    b2.receive(a.hello())
    assert b2.receive(frame) == []
    assert b2.drops["replayed"] == 1
    # Reflected back to its sender: it carries b's id, not a's.
    assert a.receive(frame) == []
    assert a.drops["replayed"] == 1


def test_malformed_and_oversize_frames() -> None:
    a, b = pair()
    b.receive(a._frame(2, b.own_id, 5, b"\xc1junk"))  # opens, but is no batch
    b.receive(a._frame(9, b.own_id, 6, b""))  # unknown kind
    assert b.drops["malformed"] == 2
    b.receive(b"\xff\xff\xff\xff")
    assert b.broken and b.drops["oversize"] == 1


def test_frames_split_anywhere_reassemble() -> None:
    a, b = pair()
    data = a.seal(Batch(1.0, [session(1)])) + a.seal(Batch(2.0, [session(2)]))
    got = [batch for byte in range(len(data)) for batch in b.receive(data[byte : byte + 1])]
    assert [batch.sent_at for batch in got] == [1.0, 2.0]


def test_outbox_coalesces_and_bounds_rate() -> None:
    box = Outbox(rate=CHANGE_BYTES * 10)
    for limit in range(100):
        box.put(session(1, limit))  # one session, changed 100 times
    for index in range(2, 30):
        box.put(session(index))
    assert len(box) == 29
    first = box.take(0.0, 0.0)
    assert first is not None and len(first.changes) == 10  # one second of burst
    assert first.changes[0] == session(1, 99)  # the newest value of the first
    assert box.take(0.0, 0.0) is None  # nothing left this instant
    later = box.take(0.5, 0.0)
    assert later is not None and len(later.changes) == 5


def test_resync_replaces_the_mirror() -> None:
    mirror = Mirror()
    mirror.apply(Batch(0.0, [session(1), session(2)]), 0.0)
    box = Outbox(rate=10**6)
    box.resync([session(2, 8192)])
    box.put(session(2, 12288))  # a change while the resync waits: in place
    mirror.begin_resync()
    batch = box.take(0.0, 10.0)
    assert batch is not None
    mirror.apply(batch, 10.25)
    assert mirror.sessions() == [session(2, 12288)]
    assert mirror.last_sync == 10.25 and mirror.lag == 0.25
    mirror.apply(Batch(11.0, [SessionGone(2)]), 11.0)
    assert mirror.sessions() == []


def test_takeover_starts_past_the_reservation() -> None:
    assert takeover_limit(4096, 2**64) == 4096 + TAKEOVER_JUMP
    assert takeover_limit(2**64 - 5, 2**64 - 1) == 2**64 - 1


def test_dns_mapping_bound_is_the_nat_handlers() -> None:
    assert codec.MAX_REAL_ADDRESSES == handler.MAX_REAL_ADDRESSES
