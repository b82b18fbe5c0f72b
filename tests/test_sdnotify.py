from __future__ import annotations

import os
import socket

import pytest

from gateway.telemetry.sdnotify import Notifier, socket_address, watchdog_interval


def _recv_all(sock: socket.socket, count: int) -> list[str]:
    return [sock.recv(4096).decode() for _ in range(count)]


def test_messages_arrive_in_order_on_path_socket(
    notify_path: tuple[str, socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, sock = notify_path
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    notifier = Notifier()
    assert notifier.enabled
    assert notifier.ready(status="2 peers")
    assert notifier.status("2 peers, rx 1.0 MB/s\ntx 2.0 MB/s")
    assert notifier.watchdog()
    assert notifier.reloading()
    assert notifier.stopping()
    notifier.close()
    assert _recv_all(sock, 5) == [
        "READY=1\nSTATUS=2 peers",
        "STATUS=2 peers, rx 1.0 MB/s tx 2.0 MB/s",
        "WATCHDOG=1",
        "RELOADING=1",
        "STOPPING=1",
    ]


def test_abstract_socket() -> None:
    name = f"fzo-notify-{os.getpid()}-{id(object())}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    sock.settimeout(5)
    try:
        notifier = Notifier(f"@{name}")
        assert notifier.ready()
        assert notifier.watchdog()
        notifier.close()
        assert _recv_all(sock, 2) == ["READY=1", "WATCHDOG=1"]
    finally:
        sock.close()


def test_no_socket_is_a_noop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = Notifier()
    assert not notifier.enabled
    assert not notifier.ready()


def test_vanished_socket_does_not_raise(notify_path: tuple[str, socket.socket]) -> None:
    path, sock = notify_path
    notifier = Notifier(path)
    sock.close()
    os.unlink(path)
    assert not notifier.watchdog()
    notifier.close()


def test_bad_socket_value() -> None:
    with pytest.raises(ValueError, match="NOTIFY_SOCKET"):
        socket_address("relative/path")


def test_long_status_is_truncated(notify_path: tuple[str, socket.socket]) -> None:
    path, sock = notify_path
    notifier = Notifier(path)
    notifier.status("x" * 1000)
    notifier.close()
    assert sock.recv(4096).decode() == "STATUS=" + "x" * 200


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 30.0),
        ({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": str(os.getpid())}, 0.5),
        ({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": "1"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "abc"}, None),
        ({"WATCHDOG_USEC": "١٢"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    assert watchdog_interval(env) == expected
