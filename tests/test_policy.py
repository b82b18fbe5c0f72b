"""The policy engine: Firezone's filter semantics, most-specific-permitting match, return path."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.policy import ALLOW_UNCOUNTED, DROP, Action, IcmpErrorLimiter, Policy
from gateway.resources.filters import (
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    IPPROTO_TCP,
    IPPROTO_UDP,
    parse_filter,
    parse_ports,
)
from gateway.resources.resource import Resource, parse_resource_address

GRE = 47
ALICE, BOB = b"A" * 32, b"B" * 32


def ip(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


def resource(name: str, address: str, *filters: tuple[str, str | None]) -> Resource:
    return Resource(
        name, parse_resource_address(address), tuple(parse_filter(p, ports) for p, ports in filters)
    )


DB = resource("db", "10.98.0.0/24", ("tcp", "5432"), ("udp", "5000-5010"), ("icmp", None))
WEB = resource("web", "10.98.0.10/32", ("tcp", "443"))
OPEN = resource("open", "10.99.0.0/16")
V6 = resource("v6", "fd00:98::/64", ("icmp", None))


def policy(grants: dict[bytes, list[str]]) -> Policy:
    return Policy([DB, WEB, OPEN, V6], grants, [ipaddress.ip_address("100.64.0.1")])


def test_no_resources_means_everything_passes_uncounted() -> None:
    empty = Policy([], {ALICE: []})
    assert not empty.enabled
    assert empty.inbound(ALICE, ip("192.0.2.1"), GRE, 0) is ALLOW_UNCOUNTED
    assert empty.inbound(ALICE, ip("224.0.0.1"), IPPROTO_UDP, 5353) is ALLOW_UNCOUNTED
    assert empty.outbound(ALICE, ip("192.0.2.1"), IPPROTO_TCP, 80) is ALLOW_UNCOUNTED


def test_filters_admit_listed_ports_and_protocols_only() -> None:
    p = policy({ALICE: ["db"]})
    db = p.resources.index(DB)
    assert p.inbound(ALICE, ip("10.98.0.5"), IPPROTO_TCP, 5432).resource == db
    assert p.inbound(ALICE, ip("10.98.0.5"), IPPROTO_TCP, 5432).action is Action.ALLOW
    assert p.inbound(ALICE, ip("10.98.0.5"), IPPROTO_UDP, 5000).action is Action.ALLOW
    assert p.inbound(ALICE, ip("10.98.0.5"), IPPROTO_UDP, 5010).action is Action.ALLOW
    assert p.inbound(ALICE, ip("10.98.0.5"), IPPROTO_ICMP, 8).action is Action.ALLOW
    denied = p.inbound(ALICE, ip("10.98.0.5"), IPPROTO_TCP, 22)
    assert (denied.action, denied.resource) == (Action.PROHIBIT, db)
    assert p.inbound(ALICE, ip("10.98.0.5"), IPPROTO_UDP, 5011).action is Action.PROHIBIT
    assert p.inbound(ALICE, ip("10.98.0.5"), GRE, 0).action is Action.PROHIBIT


def test_no_filters_admit_everything_and_icmp_filter_admits_icmpv6() -> None:
    p = policy({ALICE: ["open", "v6"]})
    assert p.inbound(ALICE, ip("10.99.3.4"), GRE, 0).action is Action.ALLOW
    assert p.inbound(ALICE, ip("fd00:98::7"), IPPROTO_ICMPV6, 128).action is Action.ALLOW
    assert p.inbound(ALICE, ip("fd00:98::7"), IPPROTO_TCP, 80).action is Action.PROHIBIT


def test_ungranted_and_unknown_destinations_are_prohibited() -> None:
    p = policy({ALICE: ["web"], BOB: ["db"]})
    assert p.inbound(ALICE, ip("10.98.0.5"), IPPROTO_TCP, 5432).action is Action.PROHIBIT
    assert p.inbound(BOB, ip("10.98.0.5"), IPPROTO_TCP, 5432).action is Action.ALLOW
    unknown = p.inbound(ALICE, ip("192.0.2.1"), IPPROTO_TCP, 443)
    assert (unknown.action, unknown.resource) == (Action.PROHIBIT, None)
    # A peer the file grants nothing (e.g. added with `wg set`) reaches nothing.
    assert p.inbound(b"C" * 32, ip("10.98.0.10"), IPPROTO_TCP, 443).action is Action.PROHIBIT


def test_permitting_filter_beats_longer_prefix() -> None:
    p = policy({ALICE: ["db", "web"]})
    # 10.98.0.10 is in web (/32, tcp 443) and db (/24, tcp 5432): each port gets its resource.
    assert p.inbound(ALICE, ip("10.98.0.10"), IPPROTO_TCP, 443).resource == p.resources.index(WEB)
    assert p.inbound(ALICE, ip("10.98.0.10"), IPPROTO_TCP, 5432).resource == p.resources.index(DB)
    # Neither permits: counted against the most specific one.
    denied = p.inbound(ALICE, ip("10.98.0.10"), IPPROTO_TCP, 22)
    assert (denied.action, denied.resource) == (Action.PROHIBIT, p.resources.index(WEB))


def test_multicast_and_icmp_errors_from_peers_are_dropped_silently() -> None:
    p = policy({ALICE: ["open", "db"]})
    assert p.inbound(ALICE, ip("239.1.2.3"), IPPROTO_UDP, 5000) is DROP
    assert p.inbound(ALICE, ip("ff02::1"), IPPROTO_ICMPV6, 128) is DROP
    assert p.inbound(ALICE, ip("10.98.0.5"), IPPROTO_ICMP, 3) is DROP  # unreachable
    assert p.inbound(ALICE, ip("10.98.0.5"), IPPROTO_ICMP, 11) is DROP  # time exceeded
    assert p.inbound(ALICE, ip("fd00:98::1"), IPPROTO_ICMPV6, 2) is DROP  # packet too big


def test_gateway_addresses_answer_dns_and_echo_and_always_answer() -> None:
    p = policy({ALICE: []})
    gateway = ip("100.64.0.1")
    assert p.inbound(ALICE, gateway, IPPROTO_UDP, 53) is ALLOW_UNCOUNTED
    assert p.inbound(ALICE, gateway, IPPROTO_TCP, 53) is ALLOW_UNCOUNTED
    assert p.inbound(ALICE, gateway, IPPROTO_ICMP, 8) is ALLOW_UNCOUNTED
    assert p.outbound(ALICE, gateway, IPPROTO_UDP, 53) is ALLOW_UNCOUNTED


@pytest.mark.parametrize(
    ("protocol", "port_or_type"),
    [(IPPROTO_TCP, 22), (IPPROTO_TCP, 9100), (IPPROTO_UDP, 123), (IPPROTO_ICMP, 13), (GRE, 0)],
)
def test_no_other_service_of_the_gateway_host_is_reachable(
    protocol: int, port_or_type: int
) -> None:
    p = policy({ALICE: ["db"]})
    decision = p.inbound(ALICE, ip("100.64.0.1"), protocol, port_or_type)
    assert (decision.action, decision.resource) == (Action.PROHIBIT, None)


def test_the_gateway_address_is_reachable_where_a_resource_grants_it() -> None:
    own = [ipaddress.ip_address("10.99.0.1"), ipaddress.ip_address("fd00:98::1")]
    p = Policy([OPEN, V6], {ALICE: ["open", "v6"]}, own, dns_port=None)
    assert p.inbound(ALICE, ip("10.99.0.1"), IPPROTO_TCP, 22).action is Action.ALLOW
    assert p.inbound(ALICE, ip("fd00:98::1"), IPPROTO_ICMPV6, 128).action is Action.ALLOW
    assert p.inbound(ALICE, ip("fd00:98::1"), IPPROTO_UDP, 53).action is Action.PROHIBIT


def test_without_a_dns_server_the_gateway_address_answers_only_echo() -> None:
    p = Policy([OPEN], {ALICE: []}, [ipaddress.ip_address("fd00:64::1")], dns_port=None)
    assert p.inbound(ALICE, ip("fd00:64::1"), IPPROTO_ICMPV6, 128) is ALLOW_UNCOUNTED
    assert p.inbound(ALICE, ip("fd00:64::1"), IPPROTO_UDP, 53).action is Action.PROHIBIT


def test_return_path_checks_source_resource_and_source_port() -> None:
    p = policy({ALICE: ["db"]})
    assert p.outbound(ALICE, ip("10.98.0.5"), IPPROTO_TCP, 5432).action is Action.ALLOW
    assert p.outbound(ALICE, ip("10.98.0.5"), IPPROTO_ICMP, 0).action is Action.ALLOW
    # Unsolicited traffic from a port the filters do not list, or from outside the grants.
    from_ssh = p.outbound(ALICE, ip("10.98.0.5"), IPPROTO_TCP, 22)
    assert (from_ssh.action, from_ssh.resource) == (Action.DROP, p.resources.index(DB))
    assert p.outbound(ALICE, ip("10.99.0.1"), IPPROTO_TCP, 80).action is Action.DROP
    assert p.outbound(ALICE, ip("192.0.2.1"), IPPROTO_UDP, 53).action is Action.DROP


def test_return_path_icmp_errors_pass_only_about_the_peers_own_flows() -> None:
    p = policy({ALICE: ["db"]})
    router = ip("192.0.2.254")  # a router outside every resource
    ours = p.outbound(ALICE, router, IPPROTO_ICMP, 3, quoted_flow_is_peers=True)
    assert ours is ALLOW_UNCOUNTED
    assert p.outbound(ALICE, router, IPPROTO_ICMP, 3, quoted_flow_is_peers=False) is DROP
    assert p.outbound(ALICE, router, IPPROTO_ICMPV6, 2, quoted_flow_is_peers=True).action is (
        Action.ALLOW
    )


def test_redirects_never_pass_in_either_direction() -> None:
    p = policy({ALICE: ["db", "v6", "open"]})
    assert p.outbound(ALICE, ip("10.98.0.5"), IPPROTO_ICMP, 5, quoted_flow_is_peers=True) is DROP
    assert p.outbound(ALICE, ip("fd00:98::1"), IPPROTO_ICMPV6, 137) is DROP
    assert p.inbound(ALICE, ip("fd00:98::1"), IPPROTO_ICMPV6, 137) is DROP
    assert p.inbound(ALICE, ip("10.99.0.1"), IPPROTO_ICMP, 5) is DROP


def test_granted_lists_names_most_specific_first() -> None:
    assert policy({ALICE: ["db", "web", "db"]}).granted(ALICE) == ["web", "db"]
    assert policy({}).granted(ALICE) == []


def test_cache_stays_bounded() -> None:
    p = policy({ALICE: ["open"]})
    for port in range(40000):
        p.inbound(ALICE, ip("10.99.0.1"), IPPROTO_TCP, port)
    assert len(p._cache) <= 16384


@pytest.mark.parametrize(
    ("text", "expected"),
    [("443", (443, 443)), ("5000-5010", (5000, 5010)), ("1-65535", (1, 65535))],
)
def test_parse_ports(text: str, expected: tuple[int, int]) -> None:
    parsed = parse_ports(text)
    assert (parsed.start, parsed.end) == expected


@pytest.mark.parametrize("text", ["0", "65536", "10-5", "a", "", "1-", "-5", "1-2-3", "4 4"])
def test_parse_ports_refuses(text: str) -> None:
    with pytest.raises(ValueError, match=r"expected a port|ends before it starts"):
        parse_ports(text)


def test_parse_filter_refuses_unknown_protocol_and_icmp_ports() -> None:
    with pytest.raises(ValueError, match="unknown protocol 'sctp'"):
        parse_filter("sctp", None)
    with pytest.raises(ValueError, match="icmp has no ports"):
        parse_filter("icmp", "8")


def test_parse_resource_address() -> None:
    assert str(parse_resource_address("10.98.0.0/24")) == "10.98.0.0/24"
    assert str(parse_resource_address("fd00::1")) == "fd00::1/128"
    with pytest.raises(ValueError, match=r"host bits set; did you mean 10\.98\.0\.0/24"):
        parse_resource_address("10.98.0.1/24")
    for typo in ("10.98.0.0/33", "10.98.0.300", "fd00::g"):
        with pytest.raises(ValueError, match="expected an IPv4 or IPv6 network"):
            parse_resource_address(typo)
    assert str(parse_resource_address("*.corp.test")) == "*.corp.test"
    with pytest.raises(ValueError, match="not a host name label"):
        parse_resource_address("db corp")


def test_icmp_error_limiter_bursts_then_one_per_second() -> None:
    limiter = IcmpErrorLimiter()
    assert [limiter.allow(ALICE, 0.0) for _ in range(8)] == [True] * 6 + [False] * 2
    assert limiter.allow(BOB, 0.0)  # per peer
    assert not limiter.allow(ALICE, 0.5)
    assert limiter.allow(ALICE, 1.6)
    assert not limiter.allow(ALICE, 1.7)


# ---- a model: brute force over every granted resource -------------------------------------

_networks = st.sampled_from(
    ["10.0.0.0/8", "10.1.0.0/16", "10.1.2.0/24", "10.1.2.3/32", "0.0.0.0/0", "fd00::/8"]
)
_filter = st.sampled_from(
    [
        ("tcp", None),
        ("tcp", "80"),
        ("tcp", "1000-2000"),
        ("udp", None),
        ("udp", "53"),
        ("icmp", None),
    ]
)


@st.composite
def _resources(draw: st.DrawFn) -> list[Resource]:
    count = draw(st.integers(1, 6))
    return [
        resource(f"r{i}", draw(_networks), *draw(st.lists(_filter, max_size=3)))
        for i in range(count)
    ]


@given(
    _resources(),
    st.data(),
    st.sampled_from(["10.1.2.3", "10.1.9.9", "10.200.0.1", "192.0.2.1", "fd00::5"]),
    st.sampled_from([IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMP, GRE]),
    st.sampled_from([0, 53, 80, 1500, 3000]),
)
def test_inbound_matches_brute_force(
    resources: list[Resource], data: st.DataObject, dst: str, protocol: int, port: int
) -> None:
    granted = data.draw(st.lists(st.sampled_from([r.name for r in resources]), unique=True))
    p = Policy(resources, {ALICE: granted})
    if protocol == IPPROTO_ICMP and port in (3, 11):
        return  # ICMP errors: covered above
    address = ipaddress.ip_address(dst)

    def permits(r: Resource) -> bool:
        if not r.filters:
            return True
        for f in r.filters:
            if protocol == IPPROTO_ICMP and f.protocol == "icmp":
                return True
            if f.protocol == {IPPROTO_TCP: "tcp", IPPROTO_UDP: "udp"}.get(protocol) and (
                f.ports is None or f.ports.start <= port <= f.ports.end
            ):
                return True
        return False

    def network(r: Resource) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        assert r.network is not None
        return r.network

    containing = [r for r in resources if r.name in granted and address in network(r)]
    permitting = [r for r in containing if permits(r)]
    decision = p.inbound(ALICE, address.packed, protocol, port)
    if permitting:
        best = max(network(r).prefixlen for r in permitting)
        assert decision.action is Action.ALLOW
        assert decision.resource is not None
        assert p.resources[decision.resource] in permitting
        assert network(p.resources[decision.resource]).prefixlen == best
    else:
        assert decision.action is Action.PROHIBIT
        if containing:
            assert decision.resource is not None
            assert network(p.resources[decision.resource]).prefixlen == max(
                network(r).prefixlen for r in containing
            )
        else:
            assert decision.resource is None
