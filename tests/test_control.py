"""Supervisor <-> crypto-process control messages: round trips, and bad records that are
logged and skipped."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as hs

from gateway.dataplane import control
from gateway.dataplane.control import (
    ControlError,
    ListenPortChanged,
    ListenPortRequest,
    MtuChanged,
    Reload,
    ReloadDone,
    decode_to_crypto,
    decode_to_supervisor,
    encode,
)

RELOAD = Reload(1, size=100, digest=bytes(32))


@given(hs.integers(0, 65535), hs.integers(0, 2**63 - 1))
def test_every_message_round_trips_and_fits_one_record(port: int, generation: int) -> None:
    reload = Reload(generation, size=2**62, digest=bytes(range(32)))
    for message in (reload, ListenPortChanged(port), MtuChanged(max(port, 68))):
        data = encode(message)
        assert len(data) <= control.MAX_MESSAGE_BYTES
        assert decode_to_crypto(data) == message
    for answer in (ListenPortRequest(port), ReloadDone(generation, applied=port % 2 == 0)):
        assert len(encode(answer)) <= control.MAX_MESSAGE_BYTES
        assert decode_to_supervisor(encode(answer)) == answer


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"", "truncated"),
        (b"reload", "Expected `object`"),  # the old text protocol
        (encode(RELOAD)[:-1], "truncated"),
        (encode(ListenPortRequest(51820)), "Invalid value 'listen_port_request'"),  # wrong way
        (encode(ListenPortChanged(1)).replace(b"port\x01", b"port\xd1\xff\xff"), ">= 0"),
        (encode(ListenPortChanged(1)).replace(b"port\x01", b"port\xce\x00\x01\x00\x00"), "<="),
        (b"\x81\xa4type\xa4nuke", "Invalid value 'nuke'"),
        (encode(MtuChanged(1280)).replace(b"\xcd\x05\x00", b"\x43"), ">= 68"),  # MTU 67
    ],
)
def test_a_bad_record_for_the_crypto_process_is_a_clear_error(data: bytes, why: str) -> None:
    with pytest.raises(ControlError, match="malformed control message") as caught:
        decode_to_crypto(data)
    assert why in str(caught.value)


def test_a_message_for_the_crypto_process_is_no_message_for_the_supervisor() -> None:
    with pytest.raises(ControlError, match="Invalid value 'reload'"):
        decode_to_supervisor(encode(RELOAD))


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    a.setblocking(False)
    b.setblocking(False)
    yield a, b
    a.close()
    b.close()


def test_the_receiver_logs_and_skips_bad_records_and_keeps_the_good_ones(
    pair: tuple[socket.socket, socket.socket], caplog: pytest.LogCaptureFixture
) -> None:
    supervisor_end, crypto_end = pair
    control.send_message(supervisor_end, RELOAD)
    supervisor_end.send(b"port 51821")
    supervisor_end.send(b"x" * (control.MAX_MESSAGE_BYTES + 10))  # cut to the limit
    control.send_message(supervisor_end, ListenPortChanged(51821))
    with caplog.at_level(logging.ERROR, logger="gateway.dataplane.control"):
        received = list(control.receive_messages(crypto_end, decode_to_crypto))
    assert received == [RELOAD, ListenPortChanged(51821)]
    assert len(caplog.records) == 2
    assert all("ignored a control message" in r.getMessage() for r in caplog.records)
    assert list(control.receive_messages(crypto_end, decode_to_crypto)) == []  # drained
