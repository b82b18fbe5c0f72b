"""The wireguard-go harness itself: two real wireguard-go peers reach each other."""

from pathlib import Path

import psutil
import pytest

from testbed.netns import Hosts, veth
from testbed.wgpeer import DEFAULT_WIREGUARD_GO, WireGuardGo, wireguard_go_binary


def test_two_wireguard_go_peers_ping(netns_hosts: Hosts) -> None:
    a, b = netns_hosts.add("fzh"), netns_hosts.add("fzh")
    veth(a, b, "10.202.0.1/24", "10.202.0.2/24")
    wa, wb = WireGuardGo(a), WireGuardGo(b)
    try:
        wa.listen(51820)
        wb.listen(51821)
        wa.add_peer(wb.public_key, allowed_ips="10.99.0.2/32", endpoint="10.202.0.2:51821")
        wb.add_peer(wa.public_key, allowed_ips="10.99.0.1/32")
        wa.up("10.99.0.1/24")
        wb.up("10.99.0.2/24")
        out = a.run("ping", "-c", "2", "-i", "0.2", "-W", "3", "10.99.0.2")
        assert "2 received" in out
        wb.wait_handshake(wa.public_key)
    finally:
        wa.close()
        wb.close()
    assert not wa.socket.exists()


def test_peer_runs_the_wireguard_go_binary_it_is_given(netns_hosts: Hosts, tmp_path: Path) -> None:
    # A link under another name stands for a newer build: the process must be started from it.
    other = tmp_path / "wireguard-go-other"
    other.symlink_to(DEFAULT_WIREGUARD_GO)
    wg = WireGuardGo(netns_hosts.add("fzh"), binary=str(other))
    try:
        assert psutil.Process(wg.proc.pid).cmdline()[0] == str(other)
    finally:
        wg.close()


def test_a_missing_wireguard_go_binary_is_named_in_the_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"wireguard-go binary .*nothing.* does not exist"):
        wireguard_go_binary(tmp_path / "nothing")
    (tmp_path / "plain").write_text("")
    with pytest.raises(ValueError, match=r"plain.* is not an executable file"):
        wireguard_go_binary(tmp_path / "plain")
    assert wireguard_go_binary(None) == DEFAULT_WIREGUARD_GO
