"""Cookie MACs: mac1 always, mac2 from a cookie that follows a secret rotated every 120 s."""

from __future__ import annotations

import os

from gateway.wireguard.constants import COOKIE_REFRESH_TIME
from gateway.wireguard.cookie import CookieChecker, CookieGenerator, LoadMonitor
from gateway.wireguard.messages import INITIATION_MAC1_END, parse_cookie_reply

SOURCE = bytes([192, 0, 2, 1, 0xCA, 0x6C])


def test_mac1_mac2_and_secret_rotation() -> None:
    responder_public = os.urandom(32)
    checker = CookieChecker(responder_public, os.urandom)
    generator = CookieGenerator(responder_public)
    msg = bytearray(os.urandom(148))
    generator.add_macs(msg, INITIATION_MAC1_END, 0.0)
    assert checker.check_mac1(bytes(msg), INITIATION_MAC1_END)
    assert not checker.check_mac2(bytes(msg), INITIATION_MAC1_END, SOURCE, 0.0)
    reply = parse_cookie_reply(
        checker.cookie_reply(bytes(msg), INITIATION_MAC1_END, 9, SOURCE, 0.0)
    )
    assert reply is not None
    assert reply.receiver == 9
    assert generator.consume_reply(reply, 0.0)
    generator.add_macs(msg, INITIATION_MAC1_END, 1.0)
    assert checker.check_mac2(bytes(msg), INITIATION_MAC1_END, SOURCE, 1.0)
    assert not checker.check_mac2(bytes(msg), INITIATION_MAC1_END, SOURCE[:4] + b"\0\1", 1.0)
    # The secret rotates: the same cookie no longer validates.
    assert not checker.check_mac2(bytes(msg), INITIATION_MAC1_END, SOURCE, COOKIE_REFRESH_TIME + 2)
    # The sender stops using a cookie older than COOKIE_REFRESH_TIME: mac2 is zero again.
    generator.add_macs(msg, INITIATION_MAC1_END, COOKIE_REFRESH_TIME + 2)
    assert msg[-16:] == bytes(16)
    msg[0] ^= 1
    assert not checker.check_mac1(bytes(msg), INITIATION_MAC1_END)


def test_cookie_reply_only_for_last_mac1() -> None:
    public = os.urandom(32)
    checker, generator = CookieChecker(public, os.urandom), CookieGenerator(public)
    first, second = bytearray(os.urandom(148)), bytearray(os.urandom(148))
    generator.add_macs(first, INITIATION_MAC1_END, 0.0)
    stale = checker.cookie_reply(bytes(first), INITIATION_MAC1_END, 1, SOURCE, 0.0)
    generator.add_macs(second, INITIATION_MAC1_END, 0.0)
    parsed = parse_cookie_reply(stale)
    assert parsed is not None
    assert not generator.consume_reply(parsed, 0.0)


def test_load_monitor_threshold_and_hold_time() -> None:
    load = LoadMonitor(threshold=3)
    assert [load.record(0.1 * i) for i in range(4)] == [False, False, False, True]
    assert load.record(1.2)  # still within a second of the last overload
    assert not load.record(2.5)
