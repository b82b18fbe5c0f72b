"""Property (issue #11): whatever `check-config` accepts starts and keeps running.

Hypothesis writes config files over the value space of every field, valid and not. Each
one is either refused with `<file>: <key path>: <problem>` lines, or it goes through what
the data plane does with it, in-process and without root: the crypto process's Device with
its peers (applied twice, as a SIGHUP reload does) and timers, the ring framing of every
endpoint, the UDP process's socket with the configured buffers and its address for every
endpoint (nothing is sent), the UAPI dump parsed back and applied to a fresh device, and
the metrics server bound on a free port when the listen address is loopback.
"""

from __future__ import annotations

import atexit
import base64
import ipaddress
import json
import shutil
import socket
import tempfile
from pathlib import Path
from typing import TypeVar

import nacl.public
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from gateway import keys
from gateway.config import ConfigError, GatewayConfig, parse_config_text
from gateway.dataplane.device_config import apply_peers, build_device
from gateway.dataplane.framing import decode_endpoint, encode_endpoint
from gateway.dataplane.uapi_backend import DeviceBackend
from gateway.dns.forwarder import Forwarder
from gateway.dns.resources import ResourceAnswers
from gateway.ha.channel import Channel
from gateway.ha.outbox import Outbox
from gateway.policy import Policy
from gateway.telemetry.metrics import MetricsServer
from gateway.uapi import format_get, format_set, parse_set
from gateway.udp_io import UdpIo
from gateway.wireguard.device import Device
from tests.offline_dns import use_offline_dns

T = TypeVar("T")
PRIVATE = keys.generate_private_key()
KEYS = [keys.public_key(keys.generate_private_key()) for _ in range(3)]
# Key files the [ha] table names: its own replication key, a malformed one, and the
# WireGuard key (refused: replication has its own).
KEY_DIR = Path(tempfile.mkdtemp(prefix="fzgw-config-property-"))
atexit.register(shutil.rmtree, KEY_DIR, ignore_errors=True)
HA_KEY = keys.generate_private_key()
for _name, _text_value in (
    ("ha.key", keys.encode_key(HA_KEY)),
    ("bad.key", "not a key"),
    ("wg.key", keys.encode_key(PRIVATE)),
):
    (KEY_DIR / _name).write_text(_text_value + "\n")
    (KEY_DIR / _name).chmod(0o600)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _text(*values: str) -> st.SearchStrategy[str]:
    return st.sampled_from(values) | st.text(max_size=24)


def mostly(valid: st.SearchStrategy[T], invalid: st.SearchStrategy[T]) -> st.SearchStrategy[T]:
    """Valid nine times in ten, so that many whole configs get through validation."""
    return st.integers(0, 9).flatmap(lambda i: invalid if i == 0 else valid)


VALID_KEY = st.sampled_from([keys.encode_key(k) for k in KEYS])
BAD_KEY = st.sampled_from(
    [keys.encode_key(keys.public_key(PRIVATE)), "", "AAAA", "not base64!"]
) | st.binary(min_size=0, max_size=40).map(_b64)
ENDPOINT = mostly(
    st.sampled_from(
        [
            "192.0.2.1:51820",
            "[2001:db8::1]:1",
            "[::ffff:192.0.2.1]:65535",
            "0.0.0.0:1",
            "[::]:9",
            "255.255.255.255:7",
            "localhost:51820",
            "localhost:1",
        ]
    ),
    _text(
        "no-such-host.invalid:51820",
        "[fe80::1%lo]:51820",
        "[fe80::1%1]:51820",
        "192.0.2.1:0",
        "192.0.2.1:65536",
        "192.0.2.1",
        "2001:db8::1:51820",
        "[192.0.2.1]:1",
        ":1",
    ),
)
NETWORK = mostly(
    st.integers(0, 255).map(lambda i: f"10.{i}.0.0/16")
    | st.integers(0, 0xFFFF).map(lambda i: f"fd00:{i:x}::/64")
    | st.sampled_from(["0.0.0.0/0", "::/0", "100.64.0.2/32", "100.64.0.3"]),
    _text("10.0.0.1/8", "fe80::%lo/64", "10.0.0.0/33", "::/129"),
)
ADDRESS = mostly(
    st.sampled_from(["100.64.0.1/10", "fd00::1/64", "10.0.0.1", "::1/128", "192.0.2.1/32"]),
    _text("10.0.0.1/33", "fe80::1%lo/64"),
)
METRICS = mostly(
    st.sampled_from(["127.0.0.1:9586", "[::1]:9586", "localhost:9586", "0.0.0.0:9586"]),
    _text("[fe80::1%lo]:9586", "127.0.0.1:0", "127.0.0.1", "no-such-host.invalid:1"),
)
UINT16 = mostly(st.integers(1, 65535), st.integers(-1, 70_000))
RESOURCE_NAME = mostly(st.sampled_from(["db", "web", "app"]), _text("", "x" * 65))
RESOURCE_ADDRESS = mostly(
    NETWORK | st.sampled_from(["app.corp.test", "*.corp.test", "db.example"]),
    _text("*.", "a..b", "10.0.0.300", "app corp", "-x.test"),
)
PORTS = mostly(st.sampled_from(["443", "5000-5010", "1-65535"]), _text("0", "10-5", "70000", "a"))
PROTOCOL = mostly(st.sampled_from(["tcp", "udp", "icmp"]), _text("sctp", "TCP", ""))
UPSTREAM = mostly(
    st.sampled_from(["10.98.0.2:53", "10.98.0.3", "[fd00::53]:5353"]),
    _text("dns.corp.test:53", "[fe80::1%lo]:53", "10.0.0.1:0"),
)
HA_LISTEN = mostly(  # this host's addresses; 192.0.2.10 is not
    st.sampled_from(["127.0.0.1:51821", "127.0.0.2:51822", "[::1]:51821"]),
    _text("192.0.2.10:51821", "0.0.0.0:51821", "[::]:1", "localhost:51821", "127.0.0.1:0"),
)
HA_PEER = mostly(
    st.sampled_from(["192.0.2.11:51821", "[2001:db8::11]:51821", "127.0.0.3:51821"]),
    _text("127.0.0.1:51821", "peer.invalid:51821", "127.0.0.1:70000"),
)
HA_PEER_KEY = mostly(
    st.just(keys.encode_key(keys.public_key(keys.generate_private_key()))),
    BAD_KEY | st.just(keys.encode_key(keys.public_key(HA_KEY))),
)
BUFFER = mostly(st.integers(64 * 1024, 64 << 20), st.integers(0, 1 << 31))


def _toml_string(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def _list(values: list[str]) -> str:
    return "[" + ", ".join(map(_toml_string, values)) + "]"


@st.composite
def _resources_and_dns(draw: st.DrawFn) -> tuple[list[str], list[str]]:
    """[[resources]] tables and a [dns] table as TOML lines, and the resources' names."""
    lines: list[str] = []
    names: list[str] = []
    for i in range(draw(st.integers(0, 3))):
        name = draw(mostly(st.just(f"r{i}"), RESOURCE_NAME))  # mostly unique, sometimes not
        names.append(name)
        lines.append("[[resources]]")
        lines.append(f"name = {_toml_string(name)}")
        lines.append(f"address = {_toml_string(draw(RESOURCE_ADDRESS))}")
        filters = []
        for _ in range(draw(st.integers(0, 2))):
            protocol = draw(PROTOCOL)
            ports = draw(st.none() | PORTS)
            entry = f"protocol = {_toml_string(protocol)}"
            if ports is not None:
                entry += f", ports = {_toml_string(ports)}"
            filters.append("{ " + entry + " }")
        if filters:
            lines.append(f"filters = [{', '.join(filters)}]")
    if draw(st.booleans()):
        lines.append("[dns]")
        if draw(st.booleans()):
            lines.append(f"port = {draw(UINT16)}")
        lines.append(f"upstreams = {_list(draw(st.lists(UPSTREAM, max_size=2)))}")
    return lines, names


@st.composite
def config_texts(draw: st.DrawFn) -> str:
    name = draw(mostly(st.sampled_from(["fzgw0", "a" * 15]), _text("a" * 16, "a/b", "", "..")))
    lines = ["[interface]", f"name = {_toml_string(name)}"]
    private_key = draw(mostly(st.just(keys.encode_key(PRIVATE)), BAD_KEY))
    lines.append(f"private_key = {_toml_string(private_key)}")
    if draw(st.booleans()):
        lines.append(f"listen_port = {draw(UINT16)}")
    lines.append(f"addresses = {_list(draw(st.lists(ADDRESS, max_size=3)))}")
    if draw(st.booleans()):
        lines.append(f"mtu = {draw(mostly(st.integers(1280, 65535), st.integers(0, 70_000)))}")
    resource_lines, names = draw(_resources_and_dns())
    grantable = mostly(st.sampled_from(names), RESOURCE_NAME) if names else RESOURCE_NAME
    for _ in range(draw(st.integers(0, 3))):
        lines.append("[[peers]]")
        lines.append(f"public_key = {_toml_string(draw(mostly(VALID_KEY, BAD_KEY)))}")
        if draw(st.booleans()):
            psk = mostly(st.just(keys.encode_key(keys.generate_preshared_key())), BAD_KEY)
            lines.append(f"preshared_key = {_toml_string(draw(psk))}")
        lines.append(f"allowed_ips = {_list(draw(st.lists(NETWORK, max_size=3)))}")
        if draw(st.booleans()):
            lines.append(f"endpoint = {_toml_string(draw(ENDPOINT))}")
        if draw(st.booleans()):
            lines.append(f"persistent_keepalive = {draw(UINT16)}")
        if draw(st.booleans()):
            grants = draw(st.lists(grantable, max_size=3))
            lines.append(f"resources = {_list(grants)}")
    lines += resource_lines
    if draw(st.booleans()):
        lines.append(f"[metrics]\nlisten = {_toml_string(draw(METRICS))}")
    if draw(st.booleans()):
        key_file = draw(mostly(st.just("ha.key"), st.sampled_from(["bad.key", "wg.key", "none"])))
        lines += [
            "[ha]",
            f"listen = {_toml_string(draw(HA_LISTEN))}",
            f"peer = {_toml_string(draw(HA_PEER))}",
            f"secret_key_file = {_toml_string(key_file)}",
            f"peer_public_key = {_toml_string(draw(HA_PEER_KEY))}",
        ]
        if draw(st.booleans()):
            role = mostly(st.sampled_from(["active", "standby"]), _text("primary"))
            lines.append(f"role = {_toml_string(draw(role))}")
        if draw(st.booleans()):
            rate = mostly(st.integers(16384, 1 << 30), st.integers(-1, 1 << 31))
            lines.append(f"rate = {draw(rate)}")
    if draw(st.booleans()):
        lines.append(f"[udp]\nreceive_buffer = {draw(BUFFER)}\nsend_buffer = {draw(BUFFER)}")
    return "\n".join(lines) + "\n"


def _no_snapshot() -> object:
    raise AssertionError("the metrics server is only bound, never scraped")


def _run_data_plane(config: GatewayConfig) -> None:
    """What the gateway's processes do with an accepted config; raises if any step fails."""
    now = 1000.0
    device = build_device(config, now)
    apply_peers(device, config, now + 1)  # a SIGHUP reload of the same file
    endpoints = [peer.endpoint for peer in device.peers() if peer.endpoint is not None]
    for step in range(30):  # timers: keepalives and handshake initiations for 30 s
        device.tick(now + 1 + step)
        endpoints += [endpoint for endpoint, _ in device.take_transmits()]

    # Dual-stack on "::" as the gateway's; nothing is sent, only addresses are made.
    udp = UdpIo(0, config.udp.receive_buffer, config.udp.send_buffer, bind_host=None)
    try:
        for endpoint in endpoints:  # the crypto -> UDP ring, then the socket address
            message = encode_endpoint(endpoint) + b"datagram"
            host, port = decode_endpoint(message)
            assert (ipaddress.ip_address(host), port) == (
                ipaddress.ip_address(endpoint[0]),
                endpoint[1],
            )
            udp._sockaddr(endpoint)
    finally:
        udp.sock.close()

    backend = DeviceBackend(
        device, listen_port=config.interface.listen_port, request_listen_port=lambda _p: None
    )
    state = backend.get_snapshot()
    format_get(state)
    fresh = DeviceBackend(
        Device(None), listen_port=state.listen_port, request_listen_port=lambda _p: None
    )
    assert fresh.apply(parse_set(format_set(state))) == 0
    assert format_set(fresh.get_snapshot()) == format_set(state)  # counters aside, the same

    # The crypto process's policy and the DNS process's forwarder and resource answers.
    grants = {peer.public_key: peer.resources for peer in config.peers}
    own = [a.ip for a in config.interface.addresses]
    policy = Policy(config.resources, grants, own)
    for peer in config.peers:
        for network in peer.allowed_ips:
            policy.outbound(peer.public_key, network.network_address.packed, 6, 443)
        for resource in config.resources:
            if resource.network is not None:
                policy.inbound(peer.public_key, resource.network.network_address.packed, 6, 443)
    if config.dns is not None:
        forwarder = Forwarder(config.dns.upstreams)
        patterns = [(i, r.pattern) for i, r in enumerate(config.resources) if r.pattern]
        index = {r.name: i for i, r in enumerate(config.resources)}
        by_name = {k: [index[n] for n in names] for k, names in grants.items()}
        ResourceAnswers(patterns, by_name, lambda _address: None, forwarder)
        assert config.interface.addresses  # where the DNS server listens

    host, _ = config.metrics.listen
    if ipaddress.ip_address(host).is_loopback:
        server = MetricsServer(
            (host, 0), snapshot=_no_snapshot, ready=lambda: (True, "ok"), device="fzgw0"
        )
        server.close()

    if config.ha is not None:  # the replication channel's keys, outbox and socket
        own = nacl.public.PrivateKey(config.ha.secret_key)
        Channel(own, nacl.public.PublicKey(config.ha.peer_public_key)).hello()
        Outbox(config.ha.rate)
        host, _ = config.ha.listen  # check-config made sure it is this host's
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as listener:
            listener.bind((host, 0))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=config_texts())
def test_what_check_config_accepts_runs(text: str) -> None:
    with pytest.MonkeyPatch.context() as patch:
        use_offline_dns(patch)
        try:
            config = parse_config_text(text, base_dir=KEY_DIR, source="gw.toml")
        except ConfigError as exc:
            event("refused")
            assert exc.errors, text
            assert all(line.startswith("gw.toml: ") for line in exc.errors), exc.errors
            return
    event("accepted")
    if config.resources:
        event("accepted with resources")
    if config.dns is not None:
        event("accepted with a DNS server")
    if config.ha is not None:
        event("accepted with [ha]")
    _run_data_plane(config)


def test_the_generator_reaches_accepted_configs() -> None:
    """Guard against a property that only ever sees refused configs."""
    text = (
        f'[interface]\nname = "fzgw0"\nprivate_key = "{keys.encode_key(PRIVATE)}"\n'
        'addresses = ["100.64.0.1/10"]\n'
        f'[[peers]]\npublic_key = "{keys.encode_key(KEYS[0])}"\nallowed_ips = ["10.0.0.0/8"]\n'
        'endpoint = "localhost:51820"\npersistent_keepalive = 1\nresources = ["db", "app"]\n'
        '[[resources]]\nname = "db"\naddress = "10.98.0.0/24"\n'
        'filters = [{ protocol = "tcp", ports = "5432" }]\n'
        '[[resources]]\nname = "app"\naddress = "*.corp.test"\n'
        '[dns]\nupstreams = ["10.98.0.2"]\n'
        '[metrics]\nlisten = "localhost:9586"\n'
        '[ha]\nlisten = "127.0.0.1:51821"\npeer = "127.0.0.2:51821"\nsecret_key_file = "ha.key"\n'
        f'peer_public_key = "{keys.encode_key(KEYS[1])}"\n'
    )
    with pytest.MonkeyPatch.context() as patch:
        use_offline_dns(patch)
        config = parse_config_text(text, base_dir=KEY_DIR, source="gw.toml")
    assert config.ha is not None
    assert config.peers[0].endpoint == ("127.0.0.1", 51820)
    assert [r.name for r in config.resources] == ["db", "app"]
    assert config.dns is not None
    _run_data_plane(config)
