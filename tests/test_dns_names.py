"""DNS resource name patterns and proxy addresses."""

from __future__ import annotations

import ipaddress

import dns.name
import pytest

from gateway.dns.proxy import ProxyAddresses
from gateway.resources.names import parse_name_pattern
from gateway.resources.proxy_ranges import IPV4_RANGE, IPV6_RANGE


def name(text: str) -> dns.name.Name:
    return dns.name.from_text(text)


def test_exact_name_matches_itself_only_case_insensitively() -> None:
    pattern = parse_name_pattern("App.Corp.Test")
    assert str(pattern) == "app.corp.test"
    assert pattern.matches(name("app.corp.test"))
    assert pattern.matches(name("APP.corp.test."))
    assert not pattern.matches(name("x.app.corp.test"))
    assert not pattern.matches(name("corp.test"))


def test_wildcard_matches_every_name_below_not_the_name_itself() -> None:
    pattern = parse_name_pattern("*.corp.test")
    assert str(pattern) == "*.corp.test"
    assert pattern.matches(name("app.corp.test"))
    assert pattern.matches(name("a.b.corp.test"))
    assert not pattern.matches(name("corp.test"))
    assert not pattern.matches(name("evilcorp.test"))


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "expected a DNS name"),
        ("*.", "expected a DNS name"),
        ("a.*.corp", "expected a DNS name"),
        ("**.corp", "expected a DNS name"),
        ("app..corp", "is not a host name label"),
        ("app corp", "is not a host name label"),
        ("-app.corp", "starts or ends with '-'"),
        ("ä.corp", "is not a host name label"),
        ("x" * 64 + ".corp", "label"),
        ("a." * 127 + "b", "longer than 253"),
        (".", "expected a DNS name"),
    ],
)
def test_bad_patterns_are_refused_with_a_reason(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_name_pattern(text)


def test_proxy_pairs_are_stable_per_name_and_inside_firezones_ranges() -> None:
    proxies = ProxyAddresses()
    first = proxies.assign(name("app.corp.test"))
    assert first == proxies.assign(name("APP.corp.test"))
    other = proxies.assign(name("db.corp.test"))
    assert other != first
    for pair in (first, other):
        assert pair.v4 in IPV4_RANGE and pair.v4 != IPV4_RANGE.network_address
        assert pair.v6 in IPV6_RANGE and pair.v6 != IPV6_RANGE.network_address
    assert proxies.name_of(first.v4) == name("app.corp.test")
    assert proxies.name_of(other.v6) == name("db.corp.test")
    assert proxies.name_of(ipaddress.ip_address("100.96.200.1")) is None
    assert proxies.name_of(ipaddress.ip_address("10.0.0.1")) is None


def test_proxy_table_is_bounded_and_recycles_the_least_recently_used() -> None:
    proxies = ProxyAddresses(capacity=2)
    a = proxies.assign(name("a.test"))
    proxies.assign(name("b.test"))
    proxies.assign(name("a.test"))  # a is now the most recent
    c = proxies.assign(name("c.test"))  # takes b's pair
    assert len(proxies) == 2
    assert proxies.assign(name("a.test")) == a
    assert proxies.name_of(c.v4) == name("c.test")
    with pytest.raises(ValueError, match="capacity"):
        ProxyAddresses(capacity=0)


def test_a_fresh_proxy_table_gives_each_name_the_pair_it_had_before() -> None:
    """A restarted DNS process must not hand a name's old pair to another name: the crypto
    process still maps that pair, and peers still hold the old answer."""
    names = [name(f"host{i}.corp.test") for i in range(50)]
    before = ProxyAddresses()
    pairs = {n: before.assign(n) for n in names}
    after = ProxyAddresses()
    for n in reversed(names):  # asked for in another order
        assert after.assign(n) == pairs[n]


def test_names_whose_hashes_collide_get_the_next_free_pair() -> None:
    proxies = ProxyAddresses(capacity=3)
    pairs = {proxies.assign(name(f"n{i}.test")) for i in range(3)}
    assert len(pairs) == 3  # every slot used once, whatever the hashes
