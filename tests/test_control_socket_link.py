"""gateway.uapi.link: root links /run/wireguard/<ifname>.sock to the socket the gateway binds
in its own directory, so the gateway never writes /run/wireguard. Plain directories under
tmp_path stand in for both; tests/test_least_privilege.py runs it with `wg` and the unit's
privileges."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from gateway.uapi.link import LinkError, link_control_socket, unlink_control_sockets
from gateway.uapi.server import CONTROL_DIR_ENV, SOCKET_DIR, control_socket_dir


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    own = tmp_path / "firezone-gw"
    own.mkdir()
    return own, tmp_path / "wireguard"


def test_the_link_reaches_the_gateways_socket(dirs: tuple[Path, Path]) -> None:
    own, wg_dir = dirs
    old_umask = os.umask(0o077)  # the unit's
    try:
        link = link_control_socket("fzgw7", own, wg_dir)
    finally:
        os.umask(old_umask)
    assert link == wg_dir / "fzgw7.sock"
    assert wg_dir.stat().st_mode & 0o777 == 0o755  # made root's, writable by nobody else
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(own / "fzgw7.sock"))
        server.listen(1)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(str(link))  # what `wg` does, through the link
            accepted, _ = server.accept()
            accepted.close()
    # Starting again replaces our own link.
    assert link_control_socket("fzgw7", own, wg_dir) == link
    assert unlink_control_sockets(own, wg_dir) == [link]
    assert not link.is_symlink()


def test_a_live_socket_or_a_foreign_link_is_never_replaced(dirs: tuple[Path, Path]) -> None:
    own, wg_dir = dirs
    wg_dir.mkdir()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as other:
        other.bind(str(wg_dir / "wg0.sock"))  # e.g. wireguard-go serving wg0
        other.listen(1)
        with pytest.raises(LinkError, match="in use"):
            link_control_socket("wg0", own, wg_dir)
    (wg_dir / "wg1.sock").symlink_to("/elsewhere/wg1.sock")
    with pytest.raises(LinkError, match="not ours"):
        link_control_socket("wg1", own, wg_dir)
    assert unlink_control_sockets(own, wg_dir) == []  # neither is ours
    assert (wg_dir / "wg1.sock").is_symlink()


def test_a_stale_socket_is_replaced(dirs: tuple[Path, Path]) -> None:
    own, wg_dir = dirs
    wg_dir.mkdir()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(str(wg_dir / "fzgw7.sock"))  # nobody listens: left by a crash
    assert link_control_socket("fzgw7", own, wg_dir).is_symlink()


def test_the_socket_directory_comes_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv(CONTROL_DIR_ENV, raising=False)
    assert control_socket_dir() == SOCKET_DIR
    monkeypatch.setenv(CONTROL_DIR_ENV, str(tmp_path))
    assert control_socket_dir() == tmp_path
    with pytest.raises(LinkError, match="itself"):
        link_control_socket("fzgw7", tmp_path, tmp_path)
    assert os.listdir(tmp_path) == []
