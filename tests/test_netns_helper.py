from testbed.netns import Hosts, unique_name, veth


def test_unique_names_fit_interface_limit() -> None:
    names = {unique_name("fzwgverylongtag") for _ in range(100)}
    assert len(names) == 100
    assert all(len(n) <= 15 for n in names)


def test_two_hosts_ping_over_veth(netns_hosts: Hosts) -> None:
    a, b = netns_hosts.add(), netns_hosts.add()
    veth(a, b, "10.201.0.1/24", "10.201.0.2/24")
    out = a.run("ping", "-c", "1", "-W", "2", "10.201.0.2")
    assert "1 received" in out
