"""The wireguard-go harness itself: two real wireguard-go peers reach each other."""

from testbed.netns import Hosts, veth
from testbed.wgpeer import WireGuardGo


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
