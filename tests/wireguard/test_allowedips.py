from __future__ import annotations

import ipaddress
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_network

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.wireguard.allowedips import CACHE_MAX_ENTRIES, AllowedIPs, Network


def net(text: str) -> Network:
    return ip_network(text)


def test_longest_prefix_wins_v4() -> None:
    table: AllowedIPs[str] = AllowedIPs()
    table.insert(net("0.0.0.0/0"), "default")
    table.insert(net("10.0.0.0/8"), "a")
    table.insert(net("10.1.0.0/16"), "b")
    table.insert(net("10.1.2.3/32"), "c")
    assert table.lookup(bytes([10, 1, 2, 3])) == "c"
    assert table.lookup(bytes([10, 1, 2, 4])) == "b"
    assert table.lookup(bytes([10, 2, 0, 1])) == "a"
    assert table.lookup(bytes([192, 168, 0, 1])) == "default"
    assert table.lookup_ip(IPv4Address("10.1.9.9")) == "b"
    assert len(table) == 4


def test_longest_prefix_wins_v6_and_families_are_separate() -> None:
    table: AllowedIPs[str] = AllowedIPs()
    table.insert(net("fd00::/8"), "a")
    table.insert(net("fd00:1::/32"), "b")
    table.insert(net("fd00:1::5/128"), "c")
    assert table.lookup_ip(IPv6Address("fd00:1::5")) == "c"
    assert table.lookup_ip(IPv6Address("fd00:1::6")) == "b"
    assert table.lookup_ip(IPv6Address("fdff::1")) == "a"
    assert table.lookup_ip(IPv6Address("2001:db8::1")) is None
    # An IPv4 /0 never matches IPv6 and the other way round.
    table.insert(net("0.0.0.0/0"), "v4default")
    assert table.lookup_ip(IPv6Address("2001:db8::1")) is None
    table.insert(net("::/0"), "v6default")
    assert table.lookup_ip(IPv6Address("2001:db8::1")) == "v6default"
    assert table.lookup_ip(IPv4Address("1.2.3.4")) == "v4default"


def test_bad_address_lengths_match_nothing() -> None:
    table: AllowedIPs[str] = AllowedIPs()
    table.insert(net("0.0.0.0/0"), "a")
    table.insert(net("::/0"), "b")
    for bad in (b"", b"\x01", b"\x01\x02\x03", bytes(5), bytes(15), bytes(17)):
        assert table.lookup(bad) is None


def test_lookup_takes_memoryview_slices() -> None:
    table: AllowedIPs[str] = AllowedIPs()
    table.insert(net("192.0.2.0/24"), "a")
    header = bytearray(20)
    header[16:20] = bytes([192, 0, 2, 7])
    assert table.lookup(memoryview(header)[16:20]) == "a"


def test_reinsert_moves_prefix_to_new_value() -> None:
    table: AllowedIPs[str] = AllowedIPs()
    table.insert(net("10.0.0.0/24"), "a")
    table.insert(net("10.0.1.0/24"), "a")
    assert table.lookup(bytes([10, 0, 0, 1])) == "a"  # fill the cache
    table.insert(net("10.0.0.0/24"), "b")
    assert table.lookup(bytes([10, 0, 0, 1])) == "b"
    assert table.prefixes_of("a") == [net("10.0.1.0/24")]
    assert table.prefixes_of("b") == [net("10.0.0.0/24")]
    assert len(table) == 2


def test_remove_and_remove_value() -> None:
    table: AllowedIPs[str] = AllowedIPs()
    table.insert(net("10.0.0.0/8"), "a")
    table.insert(net("10.1.0.0/16"), "b")
    table.insert(net("fd00::/64"), "b")
    assert table.lookup(bytes([10, 1, 0, 1])) == "b"
    assert table.remove(net("10.1.0.0/16"))
    assert not table.remove(net("10.1.0.0/16"))
    assert not table.remove(net("10.2.0.0/16"))
    assert table.lookup(bytes([10, 1, 0, 1])) == "a"
    assert table.remove_value("b") == 1
    assert table.remove_value("b") == 0
    assert table.lookup_ip(IPv6Address("fd00::1")) is None
    assert table.prefixes_of("b") == []
    assert table.prefixes_of("a") == [net("10.0.0.0/8")]
    assert len(table) == 1


def test_cache_is_bounded() -> None:
    table: AllowedIPs[int] = AllowedIPs()
    table.insert(net("10.0.0.0/8"), 1)
    for i in range(CACHE_MAX_ENTRIES * 2 + 3):
        assert table.lookup((0x0A000000 + i).to_bytes(4, "big")) == 1
    assert len(table._cache) <= CACHE_MAX_ENTRIES


def test_hundred_thousand_prefixes() -> None:
    table: AllowedIPs[int] = AllowedIPs()
    base = int(IPv4Address("10.0.0.0"))
    for i in range(100_000):
        table.insert(IPv4Network((base + (i << 8), 24)), i)
        table.insert(IPv6Network(((0xFD00 << 112) + (i << 64), 64)), i)
    assert len(table) == 200_000
    for i in (0, 1, 4242, 99_999):
        assert table.lookup((base + (i << 8) + 7).to_bytes(4, "big")) == i
        assert table.lookup(((0xFD00 << 112) + (i << 64) + 9).to_bytes(16, "big")) == i
    assert table.lookup((base + (100_000 << 8)).to_bytes(4, "big")) is None
    assert table.remove_value(4242) == 2
    assert table.lookup((base + (4242 << 8)).to_bytes(4, "big")) is None


# --- Model test: the table against a brute-force list scan. -------------------------------

# Few distinct high bits so that random prefixes overlap and nest.
_v4_addr = st.builds(
    lambda hi, lo: (hi << 24) | lo, st.sampled_from([10, 192]), st.integers(0, 2**24 - 1)
)
_v6_addr = st.builds(
    lambda hi, lo: (hi << 112) | lo, st.sampled_from([0xFD00, 0x2001]), st.integers(0, 2**112 - 1)
)


def _v4_net(addr: int, plen: int) -> Network:
    return IPv4Network((addr >> (32 - plen) << (32 - plen), plen))


def _v6_net(addr: int, plen: int) -> Network:
    return IPv6Network((addr >> (128 - plen) << (128 - plen), plen))


_networks = st.one_of(
    st.builds(_v4_net, _v4_addr, st.sampled_from([0, 1, 8, 9, 16, 23, 24, 30, 31, 32])),
    st.builds(_v6_net, _v6_addr, st.sampled_from([0, 7, 8, 48, 64, 100, 127, 128])),
)
_ops = st.lists(
    st.one_of(
        st.tuples(st.just("insert"), _networks, st.integers(0, 4)),
        st.tuples(st.just("remove"), _networks, st.just(0)),
        st.tuples(st.just("remove_value"), st.just(None), st.integers(0, 4)),
    ),
    max_size=40,
)


def _model_lookup(model: dict[Network, int], ip: IPv4Address | IPv6Address) -> int | None:
    best: tuple[int, int] | None = None
    for network, value in model.items():
        inside = ip.version == network.version and ip in network
        if inside and (best is None or network.prefixlen > best[0]):
            best = (network.prefixlen, value)
    return None if best is None else best[1]


@settings(max_examples=150, deadline=None)
@given(ops=_ops, probes=st.lists(st.one_of(_v4_addr, _v6_addr), max_size=20))
def test_matches_brute_force_model(
    ops: list[tuple[str, Network | None, int]], probes: list[int]
) -> None:
    table: AllowedIPs[int] = AllowedIPs()
    model: dict[Network, int] = {}
    for op, network, value in ops:
        if op == "insert":
            assert network is not None
            table.insert(network, value)
            model[network] = value
        elif op == "remove":
            assert network is not None
            assert table.remove(network) == (network in model)
            model.pop(network, None)
        else:
            expected = [n for n, v in model.items() if v == value]
            assert table.remove_value(value) == len(expected)
            for n in expected:
                del model[n]
        # Probe each prefix's own address, its last address, and random addresses.
        ips: list[IPv4Address | IPv6Address] = []
        for n in model:
            ips += [n.network_address, n.broadcast_address]
        ips += [ipaddress.ip_address(p) for p in probes]
        for ip in ips:
            assert table.lookup_ip(ip) == _model_lookup(model, ip), ip
        assert len(table) == len(model)
        for v in range(5):
            assert set(table.prefixes_of(v)) == {n for n, w in model.items() if w == v}


def test_version_changes_with_every_change_and_only_then() -> None:
    table: AllowedIPs[str] = AllowedIPs()
    seen = [table.version]

    def changed() -> bool:
        seen.append(table.version)
        return seen[-1] != seen[-2]

    table.insert(ip_network("10.0.0.0/24"), "a")
    assert changed()
    table.lookup(IPv4Address("10.0.0.1").packed)
    assert not changed()
    table.insert(ip_network("10.0.0.0/24"), "b")  # moved to another value
    assert changed()
    assert not table.remove(ip_network("10.9.0.0/24"))
    assert not changed()
    assert table.remove_value("b") == 1
    assert changed()
    assert table.remove_value("b") == 0
    assert not changed()
