"""The UAPI socket server, driven by wireguard-tools' `wg` and by raw clients."""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import logging
import os
import select
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.dataplane.uapi_backend import DeviceBackend
from gateway.telemetry.stats import PeerStats
from gateway.uapi import SOCKET_DIR, UapiServer
from gateway.uapi.server import EVICT_IDLE, MAX_CONNECTIONS, REPLIES_PER_TURN
from gateway.wireguard.crypto import clamp
from gateway.wireguard.device import Device as WgDevice
from testbed.netns import unique_name, wait_for
from testbed.uapi_model import UapiModel


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def new_key() -> bytes:
    return clamp(os.urandom(32))


class Loop:
    """An epoll loop in a thread that serves the UAPI server, as the gateway will."""

    def __init__(self, server: UapiServer) -> None:
        self.server = server
        self._stop_r, self._stop_w = os.pipe()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with select.epoll() as ep:
            ep.register(self.server.fileno(), select.EPOLLIN)
            ep.register(self._stop_r, select.EPOLLIN)
            while True:
                for fd, _ in ep.poll():
                    if fd == self._stop_r:
                        return
                    self.server.handle_events()

    def stop(self) -> None:
        os.write(self._stop_w, b"x")
        self._thread.join(timeout=10)
        os.close(self._stop_r)
        os.close(self._stop_w)


@dataclass
class Device:
    ifname: str
    model: UapiModel
    server: UapiServer
    traffic: list[PeerStats]

    def wg(self, *args: str, stdin: str | None = None) -> str:
        proc = subprocess.run(
            ["wg", *args], input=stdin, capture_output=True, text=True, timeout=60, check=False
        )
        assert proc.returncode == 0, f"wg {' '.join(args)}: {proc.stderr}"
        return proc.stdout

    def dump(self) -> tuple[list[str], dict[str, list[str]]]:
        lines = [line.split("\t") for line in self.wg("show", self.ifname, "dump").splitlines()]
        return lines[0], {fields[0]: fields[1:] for fields in lines[1:]}


@pytest.fixture
def device() -> Iterator[Device]:
    ifname = unique_name("fzo")
    traffic: list[PeerStats] = []
    model = UapiModel(traffic=lambda: traffic)
    server = UapiServer.for_interface(ifname, model)
    loop = Loop(server)
    try:
        yield Device(ifname, model, server, traffic)
    finally:
        loop.stop()
        server.close()
    assert not (SOCKET_DIR / f"{ifname}.sock").exists()


@dataclass
class ServedBackend:
    """The crypto process's UAPI backend on a fresh Device, served on a socket at `path`;
    `changes` counts the saves it asked for (one per applied `set`)."""

    backend: DeviceBackend
    path: Path
    changes: list[int]


@pytest.fixture
def served() -> Iterator[ServedBackend]:
    changes: list[int] = []
    backend = DeviceBackend(
        WgDevice(None),
        listen_port=1,
        request_listen_port=lambda _p: None,
        on_change=lambda: changes.append(1),
    )
    server = UapiServer.for_interface(unique_name("fzb"), backend)
    loop = Loop(server)
    try:
        yield ServedBackend(backend, server.path, changes)
    finally:
        loop.stop()
        server.close()


def test_wg_set_and_show_dump(device: Device, tmp_path: Path) -> None:
    private, peer, psk = new_key(), new_key(), new_key()
    (tmp_path / "priv").write_text(b64(private))
    (tmp_path / "psk").write_text(b64(psk))
    device.wg(
        "set", device.ifname, "private-key", str(tmp_path / "priv"),
        "listen-port", "51820", "fwmark", "0x1234",
        "peer", b64(peer), "preshared-key", str(tmp_path / "psk"),
        "endpoint", "[2001:db8::7]:4444", "persistent-keepalive", "25",
        "allowed-ips", "10.1.0.0/16,fd00:1::/64",
    )  # fmt: skip
    iface, peers = device.dump()
    public = device.wg("pubkey", stdin=b64(private)).strip()
    assert iface == [b64(private), public, "51820", "0x1234"]
    assert peers[b64(peer)] == [
        b64(psk), "[2001:db8::7]:4444", "10.1.0.0/16,fd00:1::/64", "0", "0", "0", "25",
    ]  # fmt: skip

    # counters from the data plane's shared memory show up in `wg show`
    device.traffic.append(PeerStats(peer, "", 1000, 10, 2000, 20, 1_700_000_000.0))
    _, peers = device.dump()
    assert peers[b64(peer)][3:6] == ["1700000000", "1000", "2000"]

    device.wg("set", device.ifname, "fwmark", "0", "peer", b64(peer), "remove")
    iface, peers = device.dump()
    assert peers == {}
    assert iface[3] == "off"


def _conf(private: bytes, port: int, peers: dict[bytes, list[str]]) -> str:
    out = [f"[Interface]\nPrivateKey = {b64(private)}\nListenPort = {port}\n"]
    for key, ips in peers.items():
        out.append(f"[Peer]\nPublicKey = {b64(key)}")
        out.extend(f"AllowedIPs = {', '.join(ips[i : i + 200])}" for i in range(0, len(ips), 200))
        out.append("")
    return "\n".join(out)


def _allowed(device: Device) -> dict[str, set[str]]:
    _, peers = device.dump()
    return {
        key: set() if fields[2] == "(none)" else set(fields[2].split(","))
        for key, fields in peers.items()
    }


def test_wg_setconf_20k_allowed_ips_showconf_roundtrip(device: Device, tmp_path: Path) -> None:
    base = int(ipaddress.ip_address("10.0.0.0"))
    ips = [f"{ipaddress.ip_address(base + i)}/32" for i in range(20_000)]
    ips += [str(ipaddress.ip_network(f"fd00::{i:x}/128")) for i in range(500)]
    p1, p2 = new_key(), new_key()
    conf = _conf(new_key(), 51820, {p1: ips[::2], p2: ips[1::2]})
    (tmp_path / "big.conf").write_text(conf)
    device.wg("setconf", device.ifname, str(tmp_path / "big.conf"))
    allowed = _allowed(device)
    assert allowed == {b64(p1): set(ips[::2]), b64(p2): set(ips[1::2])}

    shown = device.wg("showconf", device.ifname)
    (tmp_path / "shown.conf").write_text(shown)
    device.wg("setconf", device.ifname, str(tmp_path / "shown.conf"))
    assert _allowed(device) == allowed
    assert device.wg("showconf", device.ifname) == shown


def test_wg_syncconf_applies_only_the_difference(device: Device, tmp_path: Path) -> None:
    private, p1, p2, p3 = new_key(), new_key(), new_key(), new_key()
    (tmp_path / "a.conf").write_text(
        _conf(private, 1000, {p1: ["10.1.0.0/16"], p2: ["10.2.0.0/16", "10.3.0.0/16"]})
    )
    device.wg("setconf", device.ifname, str(tmp_path / "a.conf"))
    device.wg("set", device.ifname, "peer", b64(p2), "endpoint", "192.0.2.2:7")
    (tmp_path / "b.conf").write_text(
        _conf(private, 2000, {p2: ["10.3.0.0/16"], p3: ["10.1.0.0/16"]})
    )
    device.wg("syncconf", device.ifname, str(tmp_path / "b.conf"))
    iface, peers = device.dump()
    assert iface[2] == "2000"
    assert _allowed(device) == {b64(p2): {"10.3.0.0/16"}, b64(p3): {"10.1.0.0/16"}}
    assert peers[b64(p2)][1] == "192.0.2.2:7"  # unchanged peer kept its state


def _raw(path: Path, request: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(path))
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while data := sock.recv(65536):
            chunks.append(data)
        return b"".join(chunks)


def test_errno_replies_and_pipelining(device: Device) -> None:
    path = device.server.path
    assert _raw(path, b"set=1\nbogus=1\n\n") == b"errno=-22\n\n"
    assert _raw(path, b"set=1\nno equals\n\n") == b"errno=-71\n\n"
    assert _raw(path, b"set=1\nlisten_port=70000\n\nget=1\n\n") == (
        b"errno=-22\n\nerrno=0\n\n"  # the bad request changed nothing; the get still runs
    )
    assert _raw(path, b"get=1\nx\n") == b"errno=-22\n\n"
    assert _raw(path, b"what=1\n") == b""  # unknown operation: closed, like wireguard-go
    assert _raw(path, b"set=1\n" + b"a" * 10_000 + b"\n\n") == b"errno=-5\n\n"
    reply = _raw(path, b"set=1\nlisten_port=9\n\nget=1\n\nget=1\n\n")
    assert reply == b"errno=0\n\n" + b"listen_port=9\nerrno=0\n\n" * 2


def test_slow_reader_does_not_block_other_clients(device: Device) -> None:
    prefixes = [f"10.{i >> 8}.{i & 255}.0/24" for i in range(20_000)]
    peers = {new_key(): prefixes[j::4] for j in range(4)}
    lines = [
        f"public_key={k.hex()}\n" + "".join(f"allowed_ip={ip}\n" for ip in ips)
        for k, ips in peers.items()
    ]
    assert _raw(device.server.path, ("set=1\n" + "".join(lines) + "\n").encode()) == (
        b"errno=0\n\n"
    )
    slow = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.settimeout(10)
    try:
        slow.connect(str(device.server.path))
        slow.sendall(b"get=1\n\n")
        # while the slow client reads nothing, others are served in full
        for _ in range(3):
            assert _raw(device.server.path, b"get=1\n\n").count(b"allowed_ip=") == 20_000
        chunks = []
        while not b"".join(chunks[-2:]).endswith(b"errno=0\n\n"):
            chunks.append(slow.recv(1024))
        assert b"".join(chunks).count(b"allowed_ip=") == 20_000
    finally:
        slow.close()


def test_connection_limit(device: Device) -> None:
    server = device.server
    idle = []
    reply = b""
    try:
        for _ in range(16):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(str(server.path))
            idle.append(sock)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as extra:
            extra.settimeout(10)
            extra.connect(str(server.path))
            with contextlib.suppress(ConnectionResetError, BrokenPipeError):  # refused: closed
                extra.sendall(b"get=1\n\n")
                assert extra.recv(100) == b""
    finally:
        for sock in idle:
            sock.close()
    # slots free again once the loop has seen the closes (it may see the new one first)
    for _ in range(100):
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            reply = _raw(server.path, b"get=1\n\n")
            if reply:
                break
        time.sleep(0.02)
    assert reply == b"errno=0\n\n"


def _idle_connections(path: Path, count: int) -> list[socket.socket]:
    socks = []
    for _ in range(count):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(str(path))
        socks.append(sock)
    return socks


def test_idle_connections_cannot_lock_out_wg(device: Device) -> None:
    # Issue 19: 16 idle connections used to lock `wg` out for as long as they stayed open.
    idle = _idle_connections(device.server.path, MAX_CONNECTIONS)
    try:
        time.sleep(EVICT_IDLE + 0.2)
        started = time.monotonic()
        assert "listening port" not in device.wg("show", device.ifname)  # it answers
        assert time.monotonic() - started < 5
        closed = 0
        for sock in idle:  # the one idle longest gave its place
            sock.settimeout(0.5)
            with contextlib.suppress(TimeoutError):
                closed += sock.recv(1) == b""
        assert closed >= 1
    finally:
        for sock in idle:
            sock.close()


def test_a_connection_idle_for_the_timeout_is_closed(tmp_path: Path) -> None:
    server = UapiServer(tmp_path / "idle.sock", UapiModel(), idle_timeout=0.3)
    loop = Loop(server)
    try:
        (idle,) = _idle_connections(server.path, 1)
        with idle:
            idle.settimeout(5)
            time.sleep(0.5)
            assert _raw(server.path, b"get=1\n\n").endswith(b"errno=0\n\n")  # an event
            assert idle.recv(1) == b""  # closed by the server
            wait_for(lambda: server.connections == 0, timeout=5)
    finally:
        loop.stop()
        server.close()


def test_a_pipelining_client_gets_a_few_replies_a_turn_and_others_are_served(
    tmp_path: Path,
) -> None:
    server = UapiServer(tmp_path / "fair.sock", UapiModel())  # driven by hand: no loop
    try:
        greedy, polite = _idle_connections(server.path, 2)
        with greedy, polite:
            server.handle_events()  # accepts both
            assert server.connections == 2
            greedy.sendall(b"get=1\n\n" * 100)
            polite.sendall(b"get=1\n\n")
            server.handle_events()
            polite.settimeout(5)
            assert polite.recv(4096).endswith(b"errno=0\n\n")
            got = b""
            greedy.settimeout(0.05)
            with contextlib.suppress(TimeoutError):
                while chunk := greedy.recv(65536):
                    got += chunk
            assert got.count(b"errno=0") == REPLIES_PER_TURN
            for _ in range(100 // REPLIES_PER_TURN):  # the rest comes over the next turns
                server.handle_events()
                with contextlib.suppress(TimeoutError):
                    while chunk := greedy.recv(65536):
                        got += chunk
            assert got.count(b"errno=0") == 100
    finally:
        server.close()


def test_socket_file_ownership(tmp_path: Path) -> None:
    model = UapiModel()
    server = UapiServer(tmp_path / "a.sock", model)
    assert (tmp_path / "a.sock").stat().st_mode & 0o777 == 0o700  # umask 077
    with pytest.raises(FileExistsError, match="already exists"):
        UapiServer(tmp_path / "a.sock", model)
    server.close()
    assert not (tmp_path / "a.sock").exists()

    server = UapiServer(tmp_path / "b.sock", model)
    assert server.owns_socket()
    (tmp_path / "b.sock").unlink()
    assert not server.owns_socket()
    (tmp_path / "b.sock").write_text("someone else's file")
    assert not server.owns_socket()
    server.close()
    assert (tmp_path / "b.sock").read_text() == "someone else's file"

    with pytest.raises(ValueError, match="interface name"):
        UapiServer.for_interface("../etc", model, directory=tmp_path)


def test_stale_socket_left_by_a_crash_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "stale.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))  # bound, never listening, then closed: what a crash leaves
    dead.close()
    server = UapiServer(path, UapiModel())
    loop = Loop(server)
    try:
        assert server.owns_socket()
        assert _raw(path, b"get=1\n\n").endswith(b"errno=0\n\n")
    finally:
        loop.stop()
        server.close()


def test_device_refuses_non_numeric_endpoints_and_saves_nothing(
    served: ServedBackend, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue #11: a name or a scoped address used to reach the crypto process's framing."""
    peer = new_key().hex()
    secret = os.urandom(31).hex() + "zz"  # a private key with a typo
    caplog.set_level(logging.DEBUG, logger="gateway.uapi")
    for endpoint in ("localhost:51820", "[fe80::1%lo]:51820", "[fe80::1%1]:51820"):
        request = f"set=1\npublic_key={peer}\nendpoint={endpoint}\n\n".encode()
        assert _raw(served.path, request) == b"errno=-22\n\n"
    assert _raw(served.path, f"set=1\nprivate_key={secret}\n\n".encode()) == b"errno=-22\n\n"
    assert _raw(served.path, f"set=1\nprivate_key{secret}\n\n".encode()) == b"errno=-71\n\n"
    assert list(served.backend.device.peers()) == []
    assert served.changes == []  # nothing was saved into the run-time state
    assert "private_key" in caplog.text  # the errors were logged, naming the key ...
    assert secret[:16] not in caplog.text  # ... but never its value


def test_device_refuses_allowed_ips_in_the_dns_proxy_ranges_while_dns_resources_exist(
    served: ServedBackend, caplog: pytest.LogCaptureFixture
) -> None:
    """check-config refuses them in the file; `wg set` must not bring them in at run time."""
    peer = new_key().hex()
    caplog.set_level(logging.WARNING, logger="gateway.dataplane.uapi_backend")

    def set_allowed(network: str) -> bytes:
        request = f"set=1\npublic_key={peer}\nallowed_ip={network}\n\n".encode()
        return _raw(served.path, request)

    assert set_allowed("100.96.0.5/32") == b"errno=0\n\n"  # no DNS resources: ordinary
    served.backend.refuse_proxy_ranges = True  # what the crypto process sets with DNS resources
    for inside in ("100.96.0.6/32", "fd00:2021:1111:8000::7/128"):
        assert set_allowed(inside) == b"errno=-22\n\n"
    assert set_allowed("100.64.0.0/10") == b"errno=0\n\n"  # around the range: fine
    (only,) = served.backend.device.peers()
    assert sorted(map(str, only.allowed_ips)) == ["100.64.0.0/10", "100.96.0.5/32"]
    assert served.changes == [1, 1]  # the refused requests saved nothing
    assert "fd00:2021:1111:8000::7/128 lies in the DNS proxy range" in caplog.text
