"""[[resources]] and per-peer grants in the config file, and what check-config says of them."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from gateway import config as config_module
from gateway.cli import summary_lines
from gateway.resources.filters import Protocol
from tests.test_config import (
    PEER1,
    PEER2,
    config_dir,
    errors_of,
    interface_table,
    parse,
    peer_table,
)

__all__ = ["config_dir"]  # the fixture, imported for pytest

RESOURCES = """
[[resources]]
name = "db"
address = "10.98.0.0/24"
filters = [
  { protocol = "tcp", ports = "5432" },
  { protocol = "udp", ports = "5000-5010" },
  { protocol = "icmp" },
]

[[resources]]
name = "v6"
address = "fd00:98::/64"
"""


def test_resources_and_grants_become_typed_objects(config_dir: Path) -> None:
    text = (
        interface_table()
        + peer_table(PEER1, extra='resources = ["db", "v6", "db"]')
        + peer_table(PEER2, '"100.64.0.3/32"')
        + RESOURCES
    )
    config = parse(text, config_dir)
    db, v6 = config.resources
    assert (db.name, db.network) == ("db", ipaddress.ip_network("10.98.0.0/24"))
    assert [(f.protocol, str(f.ports) if f.ports else None) for f in db.filters] == [
        (Protocol.TCP, "5432"),
        (Protocol.UDP, "5000-5010"),
        (Protocol.ICMP, None),
    ]
    assert (v6.network, v6.filters) == (ipaddress.ip_network("fd00:98::/64"), ())
    assert config.peers[0].resources == ("db", "v6")  # duplicates folded, order kept
    assert config.peers[1].resources == ()


def test_no_resources_means_no_policy(config_dir: Path) -> None:
    config = parse(interface_table() + peer_table(), config_dir)
    assert config.resources == ()
    assert any("no resources" in line for line in summary_lines(config))


def test_check_config_summary_lists_each_peers_resources(config_dir: Path) -> None:
    text = (
        interface_table()
        + peer_table(PEER1, extra='resources = ["db"]')
        + peer_table(PEER2, '"100.64.0.3/32"')
        + RESOURCES
    )
    lines = summary_lines(parse(text, config_dir))
    assert "  resource db: 10.98.0.0/24 (tcp/5432, udp/5000-5010, icmp)" in lines
    assert "  resource v6: fd00:98::/64 (every protocol and port)" in lines
    assert lines.count("    resources db") == 1
    assert lines.count("    resources none") == 1


@pytest.mark.parametrize(
    ("resources", "grant", "expected"),
    [
        (RESOURCES, '"nope"', "gw.toml: peers[0].resources[0]: no resource is named 'nope'"),
        (
            RESOURCES + '[[resources]]\nname = "db"\naddress = "10.1.0.0/16"\n',
            '"db"',
            "gw.toml: resources[2].name: duplicate: 'db' is already the name of resources[0]",
        ),
        (
            '[[resources]]\nname = ""\naddress = "10.1.0.0/16"\n',
            "",
            "gw.toml: resources[0].name: expected 1..64 characters, got 0",
        ),
        (
            f'[[resources]]\nname = "{"x" * 65}"\naddress = "10.1.0.0/16"\n',
            "",
            "gw.toml: resources[0].name: expected 1..64 characters, got 65",
        ),
        (
            '[[resources]]\nname = "a"\naddress = "10.1.0.1/16"\n',
            "",
            "gw.toml: resources[0].address: 10.1.0.1/16 has host bits set; "
            "did you mean 10.1.0.0/16?",
        ),
        (
            '[[resources]]\nname = "a"\naddress = "10.1.0.0/33"\n',
            "",
            "gw.toml: resources[0].address: expected an IPv4 or IPv6 network such as "
            "10.98.0.0/24 or a DNS name such as app.corp.test or *.corp.test, got '10.1.0.0/33'",
        ),
        (
            '[[resources]]\nname = "a"\naddress = "10.1.0.0/16"\n'
            'filters = [{ protocol = "tcp", ports = "80-22" }]\n',
            "",
            "gw.toml: resources[0].filters[0]: a: range '80-22' ends before it starts",
        ),
        (
            '[[resources]]\nname = "a"\naddress = "10.1.0.0/16"\n'
            'filters = [{ protocol = "tcp", ports = "70000" }]\n',
            "",
            "gw.toml: resources[0].filters[0]: a: expected a port 1..65535 or a range "
            "\"start-end\", got '70000'",
        ),
        (
            '[[resources]]\nname = "a"\naddress = "10.1.0.0/16"\n'
            'filters = [{ protocol = "sctp" }]\n',
            "",
            "gw.toml: resources[0].filters[0]: a: unknown protocol 'sctp' "
            "(expected one of tcp, udp, icmp)",
        ),
        (
            '[[resources]]\nname = "a"\naddress = "10.1.0.0/16"\n'
            'filters = [{ protocol = "icmp", ports = "8" }]\n',
            "",
            "gw.toml: resources[0].filters[0]: a: icmp has no ports",
        ),
        (
            '[[resources]]\nname = "a"\naddress = "10.1.0.0/16"\ncolour = "red"\n',
            "",
            "gw.toml: resources[0].colour: unknown key",
        ),
        (
            '[[resources]]\nname = "a"\n',
            "",
            "gw.toml: resources[0].address: missing required key",
        ),
    ],
)
def test_bad_resources_and_grants_are_named(
    config_dir: Path, resources: str, grant: str, expected: str
) -> None:
    extra = f"resources = [{grant}]" if grant else ""
    text = interface_table() + peer_table(PEER1, extra=extra) + resources
    assert expected in errors_of(text, config_dir)


DNS_RESOURCE = """
[[resources]]
name = "app"
address = "*.corp.test"
filters = [{ protocol = "tcp", ports = "443" }]
"""


def test_dns_resource_and_dns_table(config_dir: Path) -> None:
    text = (
        interface_table()
        + peer_table(PEER1, extra='resources = ["app"]')
        + DNS_RESOURCE
        + '[dns]\nport = 5353\nupstreams = ["10.98.0.2:53", "10.98.0.3", "[fd00:98::2]:5300"]\n'
    )
    config = parse(text, config_dir)
    (app,) = config.resources
    assert (app.network, str(app.pattern)) == (None, "*.corp.test")
    assert config.dns is not None
    assert config.dns.port == 5353
    assert config.dns.upstreams == (("10.98.0.2", 53), ("10.98.0.3", 53), ("fd00:98::2", 5300))


def test_no_dns_table_and_no_dns_resource_means_no_dns_server(config_dir: Path) -> None:
    assert parse(interface_table() + peer_table() + RESOURCES, config_dir).dns is None


def test_dns_upstreams_default_to_resolv_conf(
    config_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("# comment\nsearch corp.test\nnameserver 10.98.0.9\nnameserver fd00::53\n")
    monkeypatch.setattr(config_module, "RESOLV_CONF", resolv)
    config = parse(interface_table() + DNS_RESOURCE, config_dir)
    assert config.dns is not None
    assert (config.dns.port, config.dns.upstreams) == (53, (("10.98.0.9", 53), ("fd00::53", 53)))
    resolv.write_text("search corp.test\n")
    assert (
        f"gw.toml: dns.upstreams (from {resolv}): no upstream DNS server: give dns.upstreams"
    ) in errors_of(interface_table() + DNS_RESOURCE, config_dir)


@pytest.mark.parametrize(
    ("dns_table", "expected"),
    [
        ('upstreams = ["dns.corp.test:53"]', "dns.upstreams[0]: expected an IP address"),
        ('upstreams = ["10.98.0.2:0"]', "dns.upstreams[0]: expected an IP address"),
        ("upstreams = []", "dns.upstreams: no upstream DNS server"),
        ("port = 0", "dns.port: expected an integer in 1..65535, got 0"),
        ('colour = "red"', "dns.colour: unknown key"),
    ],
)
def test_bad_dns_tables_are_named(config_dir: Path, dns_table: str, expected: str) -> None:
    text = interface_table() + f"[dns]\n{dns_table}\n"
    assert any(expected in line for line in errors_of(text, config_dir)), expected


def test_dns_needs_interface_addresses(config_dir: Path) -> None:
    text = interface_table().replace(
        'addresses = ["100.64.0.1/10", "fd00:2021:1111::1/107"]', "addresses = []"
    )
    assert (
        "gw.toml: dns: the DNS server listens on the interface addresses, but there are none"
        in errors_of(text + '[dns]\nupstreams = ["10.98.0.2"]\n', config_dir)
    )


def _short(public_key: str) -> str:
    return f"{public_key[:4]}…{public_key[-5:-1]}"  # as wireguard-go names peers


@pytest.mark.parametrize(
    ("allowed", "proxy"),
    [
        ("100.96.0.5/32", "100.96.0.0/11"),
        ("100.96.0.0/11", "100.96.0.0/11"),
        ("fd00:2021:1111:8000::7/128", "fd00:2021:1111:8000::/107"),
    ],
)
def test_allowed_ips_in_the_dns_proxy_ranges_are_refused_with_dns_resources(
    config_dir: Path, allowed: str, proxy: str
) -> None:
    """Proxy addresses stand for DNS resources' names: routed to a peer, they would break."""
    text = (
        interface_table()
        + peer_table(PEER1, extra='resources = ["app"]')
        + peer_table(PEER2, f'"100.64.0.3/32", "{allowed}"')
        + DNS_RESOURCE
    )
    assert errors_of(text, config_dir) == [
        f"gw.toml: peers[1].allowed_ips[1]: {allowed} of peer {_short(PEER2)} lies in the "
        f"DNS proxy range {proxy}, whose addresses stand for DNS resource names"
    ]


def test_dns_proxy_ranges_are_ordinary_addresses_without_dns_resources(config_dir: Path) -> None:
    inside = '"100.96.0.5/32", "fd00:2021:1111:8000::7/128"'
    for extra in ("", RESOURCES, '[dns]\nupstreams = ["10.98.0.2"]\n'):
        config = parse(interface_table() + peer_table(PEER1, inside) + extra, config_dir)
        assert len(config.peers[0].allowed_ips) == 2
    # With DNS resources, the addresses just outside the ranges are fine.
    beside = '"100.95.255.255/32", "100.128.0.0/32", "fd00:2021:1111:7fff::/64"'
    # And so are networks around them (a site behind a peer, a default route).
    beside += ', "100.64.0.0/10", "::/0"'
    assert parse(interface_table() + peer_table(PEER1, beside) + DNS_RESOURCE, config_dir).dns
