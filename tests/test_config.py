from __future__ import annotations

import builtins
import ipaddress
import shutil
import socket
from pathlib import Path

import pytest

from gateway import keys
from gateway.config import (
    MAX_CONFIG_BYTES,
    ConfigError,
    GatewayConfig,
    KeyFile,
    load_config,
    parse_config,
    parse_config_text,
    resolve_config,
)
from tests.offline_dns import use_offline_dns

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "config" / "gateway.toml"

PRIVATE = keys.generate_private_key()
PEER1 = keys.encode_key(keys.public_key(keys.generate_private_key()))
PEER2 = keys.encode_key(keys.public_key(keys.generate_private_key()))
PSK = keys.generate_preshared_key()


def interface_table(extra: str = "") -> str:
    return f"""
[interface]
name = "fzgw0"
private_key_file = "private.key"
listen_port = 51820
addresses = ["100.64.0.1/10", "fd00:2021:1111::1/107"]
mtu = 1280
{extra}
"""


def peer_table(public_key: str = PEER1, allowed: str = '"100.64.0.2/32"', extra: str = "") -> str:
    return f"""
[[peers]]
public_key = "{public_key}"
allowed_ips = [{allowed}]
{extra}
"""


@pytest.fixture(autouse=True)
def _offline_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    use_offline_dns(monkeypatch)


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    key_file = tmp_path / "private.key"
    key_file.write_text(keys.encode_key(PRIVATE) + "\n")
    key_file.chmod(0o600)
    psk_file = tmp_path / "peer1.psk"
    psk_file.write_text(keys.encode_key(PSK) + "\n")
    psk_file.chmod(0o600)
    return tmp_path


def parse(text: str, base_dir: Path) -> GatewayConfig:
    return parse_config_text(text, base_dir=base_dir, source="gw.toml")


def errors_of(text: str, base_dir: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse(text, base_dir)
    assert str(info.value) == "\n".join(info.value.errors)
    return list(info.value.errors)


FULL = (
    interface_table()
    + peer_table(
        PEER1,
        '"100.64.0.2/32", "fd00:2021:1111::2/128"',
        'preshared_key_file = "peer1.psk"\nendpoint = "203.0.113.7:51820"\n'
        "persistent_keepalive = 25",
    )
    + peer_table(PEER2, '"10.0.0.0/8"', 'endpoint = "[2001:db8::1]:4242"')
    + '[metrics]\nlisten = "127.0.0.1:9586"\n'
)


def test_full_config_becomes_typed_objects(config_dir: Path) -> None:
    config = parse(FULL, config_dir)
    assert config.source == "gw.toml"
    interface = config.interface
    assert interface.name == "fzgw0"
    assert interface.private_key == PRIVATE
    assert interface.public_key == keys.public_key(PRIVATE)
    assert interface.private_key_file == config_dir / "private.key"
    assert interface.listen_port == 51820
    assert interface.mtu == 1280
    assert interface.addresses == (
        ipaddress.IPv4Interface("100.64.0.1/10"),
        ipaddress.IPv6Interface("fd00:2021:1111::1/107"),
    )
    first, second = config.peers
    assert first.public_key == keys.decode_key(PEER1)
    assert first.preshared_key == PSK
    assert first.allowed_ips == (
        ipaddress.IPv4Network("100.64.0.2/32"),
        ipaddress.IPv6Network("fd00:2021:1111::2/128"),
    )
    assert first.endpoint == ("203.0.113.7", 51820)
    assert first.persistent_keepalive == 25
    assert second.preshared_key is None
    assert second.endpoint == ("2001:db8::1", 4242)
    assert second.persistent_keepalive is None
    assert config.metrics.listen == ("127.0.0.1", 9586)
    assert PRIVATE.hex() not in repr(config)  # secrets stay out of logs


def test_minimal_config_defaults(tmp_path: Path) -> None:
    text = f'[interface]\nname = "fz0"\nprivate_key = "{keys.encode_key(PRIVATE)}"\n'
    config = parse(text, tmp_path)
    assert config.peers == ()
    assert config.interface.addresses == ()
    assert config.interface.listen_port == 51820
    assert config.interface.mtu == 1280
    assert config.interface.private_key_file is None
    assert config.metrics.listen == ("127.0.0.1", 9586)


def test_inline_preshared_key_and_hostname_endpoint(config_dir: Path) -> None:
    extra = f'preshared_key = "{keys.encode_key(PSK)}"\nendpoint = "localhost:51820"'
    config = parse(interface_table() + peer_table(extra=extra), config_dir)
    assert config.peers[0].preshared_key == PSK
    # Resolved at load time: only numeric addresses may reach the data plane (issue #11).
    assert config.peers[0].endpoint in {("127.0.0.1", 51820), ("::1", 51820)}


def test_host_name_metrics_listen_is_resolved(config_dir: Path) -> None:
    config = parse(interface_table() + '[metrics]\nlisten = "localhost:9586"\n', config_dir)
    assert config.metrics.listen in {("127.0.0.1", 9586), ("::1", 9586)}


def test_address_without_prefix_is_a_host_network(config_dir: Path) -> None:
    config = parse(interface_table() + peer_table(allowed='"100.64.0.9"'), config_dir)
    assert config.peers[0].allowed_ips == (ipaddress.IPv4Network("100.64.0.9/32"),)


BAD_CASES = {
    "invalid-toml": ("[interface\n", "gw.toml: invalid TOML"),
    "missing-interface": ("[metrics]\n", "gw.toml: interface: missing required key"),
    "unknown-top-level-key": (
        interface_table() + "colour = 1\n",
        "gw.toml: interface.colour: unknown key",
    ),
    "unknown-table": (interface_table() + "[extra]\n", "gw.toml: extra: unknown key"),
    "unknown-interface-key": (
        interface_table("private_keyfile = 'x'"),
        "gw.toml: interface.private_keyfile: unknown key",
    ),
    "unknown-peer-key": (
        interface_table() + peer_table() + peer_table(PEER2, extra="allowedips = []"),
        "gw.toml: peers[1].allowedips: unknown key",
    ),
    "unknown-metrics-key": (
        interface_table() + "[metrics]\nport = 1\n",
        "gw.toml: metrics.port: unknown key",
    ),
    "wrong-type": (
        interface_table().replace("51820", '"51820"'),
        "gw.toml: interface.listen_port: Expected `int`, got `str`",
    ),
    "wrong-type-in-list": (
        interface_table() + peer_table(allowed='"10.0.0.0/8", 7'),
        "gw.toml: peers[0].allowed_ips[1]: Expected `str`, got `int`",
    ),
    "peer-missing-public-key": (
        interface_table() + "[[peers]]\nallowed_ips = []\n",
        "gw.toml: peers[0].public_key: missing required key",
    ),
    "name-too-long": (
        interface_table().replace('"fzgw0"', '"a-very-long-name"'),
        "gw.toml: interface.name: expected 1..15 bytes, got 16",
    ),
    "name-empty": (
        interface_table().replace('"fzgw0"', '""'),
        "gw.toml: interface.name: expected 1..15 bytes, got 0",
    ),
    "name-with-slash": (
        interface_table().replace('"fzgw0"', '"fz/0"'),
        "gw.toml: interface.name: 'fz/0' is not a valid interface name",
    ),
    "listen-port-range": (
        interface_table().replace("51820", "0"),
        "gw.toml: interface.listen_port: expected an integer in 1..65535, got 0",
    ),
    "mtu-range": (
        interface_table().replace("mtu = 1280", "mtu = 1200"),
        "gw.toml: interface.mtu: expected an integer in 1280..65535, got 1200",
    ),
    "bad-address": (
        interface_table().replace('"100.64.0.1/10"', '"100.64.0.300/10"'),
        "gw.toml: interface.addresses[0]: expected an IP address with prefix length",
    ),
    "no-private-key": (
        interface_table().replace('private_key_file = "private.key"', ""),
        "gw.toml: interface: one of private_key or private_key_file is required",
    ),
    "private-key-inline-and-file": (
        interface_table(f'private_key = "{keys.encode_key(PRIVATE)}"'),
        "gw.toml: interface: give either private_key or private_key_file, not both",
    ),
    "private-key-bad-base64": (
        interface_table('private_key = "' + "*" * 43 + '="').replace(
            'private_key_file = "private.key"', ""
        ),
        "gw.toml: interface.private_key: key is not valid base64",
    ),
    "private-key-wrong-length": (
        interface_table('private_key = "AAAA"').replace('private_key_file = "private.key"', ""),
        "gw.toml: interface.private_key: key must be 44 base64 characters (32 bytes), got 4",
    ),
    "missing-private-key-file": (
        interface_table().replace('"private.key"', '"absent.key"'),
        "gw.toml: interface.private_key_file: key file {dir}/absent.key does not exist; "
        "create it with: (umask 077; firezone-gw genkey > {dir}/absent.key)",
    ),
    "public-key-bad-base64": (
        interface_table() + peer_table("not base64 at all but forty four characters="),
        "gw.toml: peers[0].public_key: key is not valid base64",
    ),
    "public-key-wrong-length": (
        interface_table() + peer_table(keys.encode_key(bytes(32))[:-4] + "AA=="),
        "gw.toml: peers[0].public_key: key decodes to 31 bytes, expected 32",
    ),
    "public-key-is-own": (
        interface_table() + peer_table(keys.encode_key(keys.public_key(PRIVATE))),
        "gw.toml: peers[0].public_key: is the gateway's own public key",
    ),
    "duplicate-public-key": (
        interface_table()
        + peer_table()
        + peer_table(PEER2, '"10.0.0.0/8"')
        + peer_table(PEER1, '"10.1.0.0/16"'),
        "gw.toml: peers[2].public_key: duplicate: the same key is already used by peers[0]",
    ),
    "psk-inline-and-file": (
        interface_table()
        + peer_table(extra=f'preshared_key = "{keys.encode_key(PSK)}"\npreshared_key_file = "p"'),
        "gw.toml: peers[0]: give either preshared_key or preshared_key_file, not both",
    ),
    "psk-bad-base64": (
        interface_table() + peer_table(extra='preshared_key = "@@@@"'),
        "gw.toml: peers[0].preshared_key: key must be 44 base64 characters",
    ),
    "missing-psk-file": (
        interface_table() + peer_table(extra='preshared_key_file = "none.psk"'),
        "gw.toml: peers[0].preshared_key_file: key file {dir}/none.psk does not exist; "
        "create it with: (umask 077; firezone-gw genpsk > {dir}/none.psk)",
    ),
    "same-prefix-two-peers": (
        interface_table() + peer_table() + peer_table(PEER2, '"10.0.0.0/8", "100.64.0.2/32"'),
        "gw.toml: peers[1].allowed_ips[1]: 100.64.0.2/32 is already given to peers[0]",
    ),
    "same-prefix-twice-in-peer": (
        interface_table() + peer_table(allowed='"fd00::/64", "fd00:0::/64"'),
        "gw.toml: peers[0].allowed_ips[1]: fd00::/64 is already given earlier in this peer",
    ),
    "allowed-ip-host-bits": (
        interface_table() + peer_table(allowed='"100.64.0.2/10"'),
        "gw.toml: peers[0].allowed_ips[0]: 100.64.0.2/10 has host bits set; "
        "did you mean 100.64.0.0/10?",
    ),
    "allowed-ip-scoped": (  # ipaddress takes it; routes, rings and `wg` have no zone
        interface_table() + peer_table(allowed='"fe80::%lo/64"'),
        "gw.toml: peers[0].allowed_ips[0]: expected an IP network such as 100.64.0.2/32, "
        "got 'fe80::%lo/64'",
    ),
    "interface-address-scoped": (
        interface_table().replace('"100.64.0.1/10", ', '"fe80::1%lo/64", '),
        "gw.toml: interface.addresses[0]: expected an IP address with prefix length such as "
        "100.64.0.1/10, got 'fe80::1%lo/64'",
    ),
    "allowed-ip-garbage": (
        interface_table() + peer_table(allowed='"everything"'),
        "gw.toml: peers[0].allowed_ips[0]: expected an IP network such as 100.64.0.2/32, "
        "got 'everything'",
    ),
    "endpoint-without-port": (
        interface_table() + peer_table(extra='endpoint = "203.0.113.7"'),
        "gw.toml: peers[0].endpoint: expected host:port or [IPv6]:port, got '203.0.113.7' "
        "(no port)",
    ),
    "v6-endpoint-without-port": (
        interface_table() + peer_table(extra='endpoint = "[2001:db8::1]"'),
        "gw.toml: peers[0].endpoint: expected host:port or [IPv6]:port, got '[2001:db8::1]' "
        "(no port)",
    ),
    "v6-endpoint-without-brackets": (
        interface_table() + peer_table(extra='endpoint = "2001:db8::1:51820"'),
        "(put an IPv6 address in brackets)",
    ),
    "endpoint-port-range": (
        interface_table() + peer_table(extra='endpoint = "host:70000"'),
        "gw.toml: peers[0].endpoint: expected host:port or [IPv6]:port, got 'host:70000' "
        "(port must be 1..65535)",
    ),
    "endpoint-no-host": (
        interface_table() + peer_table(extra='endpoint = ":51820"'),
        "(no host)",
    ),
    "keepalive-range": (
        interface_table() + peer_table(extra="persistent_keepalive = 0"),
        "gw.toml: peers[0].persistent_keepalive: expected an integer in 1..65535, got 0",
    ),
    "endpoint-name-does-not-resolve": (
        interface_table() + peer_table(extra='endpoint = "no-such-host.invalid:51820"'),
        "gw.toml: peers[0].endpoint: cannot resolve 'no-such-host.invalid': ",
    ),
    "endpoint-scoped-ipv6": (
        interface_table() + peer_table(extra='endpoint = "[fe80::1%lo]:51820"'),
        "gw.toml: peers[0].endpoint: expected host:port or [IPv6]:port, got '[fe80::1%lo]:51820' "
        "(scoped IPv6 addresses (with %zone) are not supported)",
    ),
    "metrics-listen-name-does-not-resolve": (
        interface_table() + '[metrics]\nlisten = "no-such-host.invalid:9586"\n',
        "gw.toml: metrics.listen: cannot resolve 'no-such-host.invalid': ",
    ),
    "metrics-listen-without-port": (
        interface_table() + '[metrics]\nlisten = "127.0.0.1"\n',
        "gw.toml: metrics.listen: expected host:port or [IPv6]:port, got '127.0.0.1' (no port)",
    ),
    "udp-buffer-too-small": (
        interface_table() + "[udp]\nreceive_buffer = 1024\n",
        "gw.toml: udp.receive_buffer: Expected `int` >= 65536",
    ),
    "max-peer-series-negative": (
        interface_table() + "[metrics]\nmax_peer_series = -1\n",
        "gw.toml: metrics.max_peer_series: Expected `int` >= 0",
    ),
    "max-peer-series-too-many": (
        interface_table() + "[metrics]\nmax_peer_series = 1000001\n",
        "gw.toml: metrics.max_peer_series: Expected `int` <= 1000000",
    ),
    "udp-unknown-key": (
        interface_table() + "[udp]\nrcvbuf = 1\n",
        "gw.toml: udp.rcvbuf: unknown key",
    ),
}


def test_max_peer_series_default_and_override(config_dir: Path) -> None:
    assert parse(interface_table(), config_dir).metrics.max_peer_series == 1000
    config = parse(interface_table() + "[metrics]\nmax_peer_series = 0\n", config_dir)
    assert config.metrics.max_peer_series == 0


def test_a_config_over_the_old_4_mib_limit_loads(config_dir: Path) -> None:
    """100,000 peers take about 11 MB; the limit leaves room for them."""
    path = config_dir / "big.toml"
    path.write_text(FULL + "#" * (5 << 20) + "\n")
    assert len(load_config(path).peers) == 2


def test_a_config_over_the_limit_is_refused(config_dir: Path) -> None:
    path = config_dir / "huge.toml"
    with path.open("wb") as handle:
        handle.truncate(MAX_CONFIG_BYTES + 1)  # sparse: no need to write 64 MiB
    with pytest.raises(ConfigError, match=f"larger than {MAX_CONFIG_BYTES} bytes"):
        load_config(path)


def test_udp_buffers_default_and_override(config_dir: Path) -> None:
    assert parse(interface_table(), config_dir).udp.receive_buffer == 16 * 1024 * 1024
    config = parse(interface_table() + "[udp]\nsend_buffer = 4194304\n", config_dir)
    assert config.udp.send_buffer == 4194304


@pytest.mark.parametrize(("text", "expected"), BAD_CASES.values(), ids=BAD_CASES.keys())
def test_bad_input_is_named(config_dir: Path, text: str, expected: str) -> None:
    errors = errors_of(text, config_dir)
    expected = expected.format(dir=config_dir)
    assert any(expected in line for line in errors), errors
    assert len(errors) == 1, errors


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_private_key_file_readable_by_others(config_dir: Path, mode: int) -> None:
    key_file = config_dir / "private.key"
    key_file.chmod(mode)
    (error,) = errors_of(interface_table(), config_dir)
    assert error == (
        f"gw.toml: interface.private_key_file: key file {key_file} is accessible by group or "
        f"others (mode {mode:04o}); fix it with: chmod 600 {key_file}"
    )


def test_preshared_key_file_readable_by_others(config_dir: Path) -> None:
    (config_dir / "peer1.psk").chmod(0o644)
    (error,) = errors_of(
        interface_table() + peer_table(extra='preshared_key_file = "peer1.psk"'), config_dir
    )
    assert error.startswith("gw.toml: peers[0].preshared_key_file: key file ")
    assert error.endswith(f"chmod 600 {config_dir / 'peer1.psk'}")


def test_every_error_is_listed_at_once(config_dir: Path) -> None:
    text = (
        interface_table().replace("mtu = 1280", "mtu = 9").replace("51820", "70000")
        + peer_table(allowed='"100.64.0.2/24"', extra='endpoint = "x"')
        + peer_table(PEER1, '"100.64.0.3/32"', "persistent_keepalive = 70000")
        + peer_table(PEER2, '"10.0.0.0/8"', "bogus = true")
    )
    errors = errors_of(text, config_dir)
    paths = [line.split(": ")[1] for line in errors]
    assert paths == [
        "peers[2].bogus",
        "interface.listen_port",
        "interface.mtu",
        "peers[0].allowed_ips[0]",
        "peers[0].endpoint",
        "peers[1].public_key",
        "peers[1].persistent_keepalive",
    ]


def test_key_files_are_relative_to_the_config_folder(
    config_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    config_file = config_dir / "gateway.toml"
    config_file.write_text(interface_table())
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    assert load_config(config_file).interface.private_key == PRIVATE


def test_load_config_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.toml")
    assert info.value.errors == (
        f"{tmp_path / 'nope.toml'}: cannot read config file: No such file or directory",
    )


def test_load_config_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    path.write_bytes(b"[interface]\nname = '\xff'\n")
    with pytest.raises(ConfigError, match=r"config file is not UTF-8 \(byte 20\)"):
        load_config(path)


def test_load_config_names_the_file(config_dir: Path) -> None:
    path = config_dir / "gateway.toml"
    path.write_text(interface_table("mtu = 1"))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.errors[0].startswith(f"{path}: ")


def test_missing_key_file_is_created_only_when_asked(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(interface_table())
    with pytest.raises(ConfigError, match=r"private\.key does not exist"):
        load_config(path)
    assert not (tmp_path / "private.key").exists()
    config = load_config(path, create_private_key=True)
    key_file = tmp_path / "private.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert keys.read_key_file(key_file) == config.interface.private_key
    assert load_config(path).interface.private_key == config.interface.private_key


def test_shipped_example_passes_once_the_key_exists(tmp_path: Path) -> None:
    copy = tmp_path / "gateway.toml"
    shutil.copy(EXAMPLE, copy)
    with pytest.raises(ConfigError, match=r"interface.private_key_file: .*private.key"):
        load_config(copy)
    config = load_config(copy, create_private_key=True)
    assert config.interface.name == "fzgw0"
    assert config.interface.listen_port == 51820
    assert config.peers == ()


def test_shipped_example_peer_block_is_valid(tmp_path: Path) -> None:
    lines = EXAMPLE.read_text().splitlines()
    for table in ("# [[peers]]", "# [[resources]]"):  # the peer's example grants the resource
        start = lines.index(table)
        end = next(i for i in range(start, len(lines)) if not lines[i].startswith("#"))
        lines[start:end] = [line.removeprefix("# ") for line in lines[start:end]]
    copy = tmp_path / "gateway.toml"
    copy.write_text("\n".join(lines))
    psk = tmp_path / "peer1.psk"
    psk.write_text(keys.encode_key(PSK))
    psk.chmod(0o600)
    config = load_config(copy, create_private_key=True)
    (peer,) = config.peers
    assert peer.preshared_key == PSK
    assert peer.endpoint == ("203.0.113.7", 51820)
    assert peer.persistent_keepalive == 25
    assert [str(n) for n in peer.allowed_ips] == ["100.64.0.2/32", "fd00:2021:1111::2/128"]


def _no_io(*_args: object, **_kwargs: object) -> None:
    raise AssertionError("parse_config must not read files or resolve names")


def test_parsing_is_pure_and_resolving_does_the_io(
    config_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Key files, host names and /etc/resolv.conf are left as written by parse_config;
    resolve_config reads and resolves them."""
    extra = 'preshared_key_file = "peer1.psk"\nendpoint = "localhost:51820"'
    text = interface_table() + peer_table(extra=extra) + '[metrics]\nlisten = "localhost:9586"\n'
    text += "[dns]\n"  # upstreams from /etc/resolv.conf
    with monkeypatch.context() as pure:
        pure.setattr(builtins, "open", _no_io)
        pure.setattr(Path, "open", _no_io)
        pure.setattr(socket, "getaddrinfo", _no_io)
        parsed = parse_config(text, source="gw.toml")
    assert parsed.errors == ()
    assert parsed.interface is not None and parsed.interface.private_key == KeyFile("private.key")
    peer = parsed.peers[0]
    assert peer is not None and peer.preshared_key == KeyFile("peer1.psk")
    assert peer.endpoint is not None and peer.endpoint.endpoint == ("localhost", 51820)
    assert parsed.dns is not None and parsed.dns.upstreams is None

    resolv_conf = config_dir / "resolv.conf"
    resolv_conf.write_text("nameserver 10.98.0.2\n")
    monkeypatch.setattr("gateway.config.RESOLV_CONF", resolv_conf)
    config = resolve_config(parsed, base_dir=config_dir)
    assert config.interface.private_key == PRIVATE
    assert config.interface.private_key_file == config_dir / "private.key"
    assert config.peers[0].preshared_key == PSK
    assert config.peers[0].endpoint in {("127.0.0.1", 51820), ("::1", 51820)}
    assert config.metrics.listen in {("127.0.0.1", 9586), ("::1", 9586)}
    assert config.dns is not None and config.dns.upstreams == (("10.98.0.2", 53),)


def test_resolving_adds_its_errors_to_the_parse_errors(config_dir: Path) -> None:
    text = interface_table().replace("mtu = 1280", "mtu = 9") + peer_table(
        extra='preshared_key_file = "missing.psk"\nendpoint = "no-such-host.invalid:1"'
    )
    parsed = parse_config(text, source="gw.toml")
    assert [line.split(": ")[1] for line in parsed.errors] == ["interface.mtu"]
    with pytest.raises(ConfigError) as info:
        resolve_config(parsed, base_dir=config_dir)
    paths = [line.split(": ")[1] for line in info.value.errors]
    assert paths == ["interface.mtu", "peers[0].preshared_key_file", "peers[0].endpoint"]


def test_own_public_key_as_a_peer_is_found_once_the_key_file_is_read(config_dir: Path) -> None:
    own = keys.encode_key(keys.public_key(PRIVATE))
    parsed = parse_config(interface_table() + peer_table(own), source="gw.toml")
    assert parsed.errors == ()  # the key file is not read yet
    with pytest.raises(ConfigError, match=r"peers\[0\]\.public_key: is the gateway's own"):
        resolve_config(parsed, base_dir=config_dir)
