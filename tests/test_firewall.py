"""The firewall stage in the crypto loop: a client's Device and the gateway's crypto loop on
in-memory rings (tests/dataplane_fakes.py), the gateway configured from a real config file
through CryptoControl, as the crypto process builds it. No root, fake clock."""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.config import load_config
from gateway.dataplane import control
from gateway.dataplane.cryptomain import CryptoControl
from gateway.dataplane.firewall import Firewall, build_policy
from gateway.dataplane.flow import flow_key
from gateway.keys import encode_key, generate_private_key, public_key
from gateway.telemetry import stats as st
from gateway.telemetry.metrics import render
from gateway.wireguard.device import Device
from ippacket import IpPacket
from ippacket.build import icmp_echo_request, icmp_packet, tcp_packet, udp_packet
from ippacket.icmp_errors import Unreachable, destination_unreachable, packet_too_big
from testbed.wire import A_ENDPOINT, B_ENDPOINT
from tests.dataplane_fakes import KeyBoard, LoopGateway, run_until_quiet

NOW = 1000.0
CLIENT = ipaddress.ip_address("100.64.0.2")
OTHER_CLIENT = ipaddress.ip_address("100.64.0.3")
DB = ipaddress.ip_address("10.98.0.5")  # resource "db": TCP 5432 only
WEB = ipaddress.ip_address("10.97.0.7")  # resource "web": not granted to CLIENT
ELSEWHERE = ipaddress.ip_address("10.99.0.1")  # in no resource
V6_HOST = ipaddress.ip_address("fd00:98::5")  # resource "v6": icmp only
CLIENT6 = ipaddress.ip_address("fd00:64::2")

RESOURCES = """
[[resources]]
name = "db"
address = "10.98.0.0/24"
filters = [{ protocol = "tcp", ports = "5432" }]

[[resources]]
name = "web"
address = "10.97.0.0/24"

[[resources]]
name = "v6"
address = "fd00:98::/64"
filters = [{ protocol = "icmp" }]
"""


def _config_text(client: bytes, grants: list[str], *, resources: bool = True) -> str:
    text = (
        '[interface]\nname = "fzfw0"\nprivate_key_file = "private.key"\n'
        'addresses = ["100.64.0.1/24"]\n'
    )
    text += (
        f'\n[[peers]]\npublic_key = "{encode_key(client)}"\n'
        f'allowed_ips = ["{CLIENT}/32", "{CLIENT6}/128"]\nresources = {grants!r}\n'
    ).replace("'", '"')
    return text + (RESOURCES if resources else "")


class Setup:
    """A client Device (routing every resource to the gateway) and the gateway's loop."""

    def __init__(
        self, tmp_path: Path, crypto_end: socket.socket, region: st.StatsRegion, config_text: str
    ) -> None:
        self.path = tmp_path / "gateway.toml"
        key = tmp_path / "private.key"
        key.write_text(encode_key(generate_private_key()) + "\n")
        key.chmod(0o600)
        self.path.write_text(config_text)
        self.crypto = CryptoControl(
            load_config(self.path),
            control_socket=crypto_end,
            runstate=None,
            listen_port=51820,
            key_board=KeyBoard(),
            now=NOW,
        )
        self.region = region
        self.gateway = LoopGateway(
            self.crypto.device,
            B_ENDPOINT,
            counters=region.process_block("crypto"),
            resource_table=region.resources,
        )
        self.crypto.attach_loop(self.gateway.loop)
        client_key = CLIENT_KEY
        gateway_public = self.crypto.device.public_key
        assert gateway_public is not None
        device = Device(client_key)
        device.upsert_peer(
            gateway_public,
            endpoint=B_ENDPOINT,
            allowed_ips=[ipaddress.ip_network(n) for n in ("0.0.0.0/0", "::/0")],
            now=NOW,
        )
        self.client = LoopGateway(device, A_ENDPOINT)

    def send(self, *packets: IpPacket, now: float = NOW) -> None:
        """Packets from the client's TUN, through the tunnel, to the gateway (and back)."""
        for packet in packets:
            assert self.client.rings.from_workers[0].send(bytes(packet.data))
        run_until_quiet(self.client, self.gateway, now)

    def reply(self, *packets: IpPacket, now: float = NOW) -> None:
        """Packets from the gateway's TUN (the resources' side) towards the client."""
        for packet in packets:
            assert self.gateway.rings.from_workers[0].send(bytes(packet.data))
        run_until_quiet(self.client, self.gateway, now)

    def at_resources(self) -> list[bytes]:
        return [p for packets in self.gateway.tun_out() for p in packets]

    def at_client(self) -> list[bytes]:
        return [p for packets in self.client.tun_out() for p in packets]


CLIENT_KEY = generate_private_key()


class Routes:
    """The firewall's view of the peers' allowed IPs, as a table of addresses."""

    def __init__(self, owners: dict[bytes, bytes]) -> None:
        self.owners = owners
        self.routes_version = 0

    def peer_key_for(self, address: bytes) -> bytes | None:
        return self.owners.get(bytes(address))

    def move(self, address: bytes, peer: bytes) -> None:
        self.owners[address] = peer
        self.routes_version += 1


@pytest.fixture
def region() -> Iterator[st.StatsRegion]:
    stats = st.StatsRegion.create(f"fzfw-{os.getpid()}-{uuid.uuid4().hex[:8]}", workers=1)
    yield stats
    stats.close()
    stats.unlink()


@pytest.fixture
def setup(
    tmp_path: Path, control_sockets: tuple[socket.socket, socket.socket], region: st.StatsRegion
) -> Setup:
    text = _config_text(public_key(CLIENT_KEY), ["db", "v6"])
    return Setup(tmp_path, control_sockets[1], region, text)


def _syn(destination: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int) -> IpPacket:
    source = CLIENT if destination.version == 4 else CLIENT6
    return tcp_packet(source, destination, 40000, port, flags=0x02, sequence=7)


def test_a_granted_port_reaches_the_resource_and_is_counted_against_it(setup: Setup) -> None:
    syn = _syn(DB, 5432)
    setup.send(syn)
    assert setup.at_resources() == [bytes(syn.data)]
    assert setup.at_client() == []
    setup.gateway.loop.turn(NOW + 2)  # past the stats interval: copies into shared memory
    (db,) = [r for r in setup.region.resources.read() if r.name == "db"]
    assert (db.allowed_packets, db.allowed_bytes, db.denied_packets) == (1, len(syn), 0)


def test_a_port_not_listed_is_answered_with_prohibited_from_the_resource(setup: Setup) -> None:
    syn = _syn(DB, 22)
    setup.send(syn)
    assert setup.at_resources() == []
    (error,) = setup.at_client()
    expected = destination_unreachable(syn, Unreachable.PROHIBITED)
    assert error == bytes(expected.data)
    parsed = IpPacket(bytearray(error))
    assert (parsed.source, parsed.destination) == (DB, CLIENT)
    assert (parsed.icmp_type, parsed.icmp_code) == (3, 13)
    counters = setup.gateway.counters
    assert counters[st.DROP_POLICY] == 1
    assert counters[st.ICMP_ERRORS_SENT] == 1
    setup.gateway.loop.turn(NOW + 2)
    text = render(setup.region.snapshot(sample_processes=False), device="fzfw0")
    assert 'firezone_gw_resource_denied_packets_total{resource="db"} 1' in text
    assert 'firezone_gw_resource_allowed_packets_total{resource="db"} 0' in text
    assert 'firezone_gw_drops_total{reason="policy"} 1' in text
    assert "firezone_gw_icmp_errors_sent_total 1" in text


def test_ping_to_a_tcp_only_resource_is_prohibited(setup: Setup) -> None:
    setup.send(icmp_echo_request(CLIENT, DB, 9, 1, b"ping"))
    assert setup.at_resources() == []
    (error,) = setup.at_client()
    assert IpPacket(bytearray(error)).icmp_code == 13


def test_a_resource_not_granted_and_an_address_in_none_are_prohibited(setup: Setup) -> None:
    setup.send(_syn(WEB, 80), _syn(ELSEWHERE, 80))
    assert setup.at_resources() == []
    sources = [IpPacket(bytearray(e)).source for e in setup.at_client()]
    assert sources == [WEB, ELSEWHERE]


def test_errors_are_rate_limited_per_peer(setup: Setup) -> None:
    setup.send(*[_syn(DB, 22) for _ in range(10)])
    assert len(setup.at_client()) == 6
    counters = setup.gateway.counters
    assert (counters[st.ICMP_ERRORS_SENT], counters[st.ICMP_ERRORS_RATE_LIMITED]) == (6, 4)
    assert counters[st.DROP_POLICY] == 10


def test_an_ipv6_resource_with_an_icmp_filter_pings_but_refuses_tcp(setup: Setup) -> None:
    ping = icmp_echo_request(CLIENT6, V6_HOST, 9, 1, b"ping6")
    setup.send(ping)
    assert setup.at_resources() == [bytes(ping.data)]
    setup.send(_syn(V6_HOST, 443))
    assert setup.at_resources() == []
    (error,) = setup.at_client()
    parsed = IpPacket(bytearray(error))
    assert (parsed.source, parsed.icmp_type, parsed.icmp_code) == (V6_HOST, 1, 1)


def test_the_return_path_passes_granted_sources_only(setup: Setup) -> None:
    setup.send(_syn(DB, 5432))  # the session exists both ways
    setup.at_resources()
    answer = tcp_packet(DB, CLIENT, 5432, 40000, flags=0x12)
    unsolicited = [
        udp_packet(ELSEWHERE, CLIENT, 53, 40000, b"x"),  # in no resource
        udp_packet(WEB, CLIENT, 80, 40000, b"x"),  # a resource not granted
        udp_packet(DB, CLIENT, 5432, 40000, b"x"),  # granted address, UDP not in the filter
        tcp_packet(DB, CLIENT, 22, 40000),  # granted address, another port
    ]
    setup.reply(answer, *unsolicited)
    assert setup.at_client() == [bytes(answer.data)]
    assert setup.gateway.counters[st.DROP_POLICY] == len(unsolicited)


def test_an_icmp_error_about_the_peers_own_flow_passes_back(setup: Setup) -> None:
    syn = _syn(DB, 5432)
    setup.send(syn)
    setup.at_resources()
    router = ELSEWHERE  # any host behind the gateway may report on a flow the peer sent
    error = packet_too_big(syn, 1200, source=router)
    foreign = udp_packet(OTHER_CLIENT, ELSEWHERE, 40000, 33434, b"trace")
    not_ours = destination_unreachable(foreign, Unreachable.PORT, source=ELSEWHERE)
    not_ours.set_destination(CLIENT)
    setup.reply(error, not_ours)
    assert setup.at_client() == [bytes(error.data)]


def test_an_icmp_error_quoting_a_flow_the_peer_never_sent_is_dropped(setup: Setup) -> None:
    setup.send(_syn(DB, 5432))
    setup.at_resources()
    # The quotes claim to be the peer's packets, but of no flow it opened: forged.
    forged = [
        destination_unreachable(_syn(DB, 5433), Unreachable.PORT, source=ELSEWHERE),
        destination_unreachable(
            udp_packet(CLIENT, ELSEWHERE, 40000, 33434, b"trace"), Unreachable.PORT, source=DB
        ),
        destination_unreachable(_syn(V6_HOST, 443), Unreachable.ADDRESS, source=V6_HOST),
    ]
    setup.reply(*forged)
    assert setup.at_client() == []
    assert setup.gateway.counters[st.DROP_POLICY] == len(forged)


def test_icmp_redirects_never_pass(setup: Setup) -> None:
    syn = _syn(DB, 5432)
    setup.send(syn, icmp_echo_request(CLIENT6, V6_HOST, 9, 1, b"ping6"))
    assert len(setup.at_resources()) == 2
    quote = bytes(syn.data)[:28]
    redirect = icmp_packet(DB, CLIENT, 5, 1, rest_of_header=int(ELSEWHERE), payload=quote)
    quote6 = bytes(icmp_echo_request(CLIENT6, V6_HOST, 9, 1, b"ping6").data)
    target = ipaddress.ip_address("fd00:98::66").packed
    redirect6 = icmp_packet(V6_HOST, CLIENT6, 137, 0, payload=target + V6_HOST.packed + quote6)
    setup.reply(redirect, redirect6)
    assert setup.at_client() == []
    assert setup.gateway.counters[st.DROP_POLICY] == 2
    # from a peer too
    setup.send(icmp_packet(CLIENT6, V6_HOST, 137, 0, payload=target + V6_HOST.packed))
    assert setup.at_resources() == []


def _source_routed(segments_left: int) -> bytes:
    """An ICMPv6 echo request to V6_HOST (granted) with a Routing header naming a further
    hop (fd00:99::1, in no resource)."""
    echo = bytes(icmp_echo_request(CLIENT6, V6_HOST, 9, 1, b"x").data)
    routing = bytes([58, 2, 0, segments_left]) + bytes(4)
    routing += ipaddress.ip_address("fd00:99::1").packed
    payload = routing + echo[40:]
    header = bytearray(echo[:40])
    header[4:6] = len(payload).to_bytes(2, "big")
    header[6] = 43  # next header: Routing
    return bytes(header) + payload


def test_a_routing_header_with_segments_left_is_dropped_and_counted(setup: Setup) -> None:
    setup.send(IpPacket(bytearray(_source_routed(1))))
    assert setup.at_resources() == []
    setup.gateway.loop.turn(NOW + 2)
    assert setup.gateway.counters[st.DROP_ROUTING_HEADER] == 1
    text = render(setup.region.snapshot(sample_processes=False), device="fzfw0")
    assert 'firezone_gw_drops_total{reason="routing_header"} 1' in text
    finished = _source_routed(0)  # no segments left: V6_HOST is the final destination
    setup.send(IpPacket(bytearray(finished)))
    assert setup.at_resources() == [finished]


def test_packets_to_the_gateways_own_address_pass(setup: Setup) -> None:
    ping = icmp_echo_request(CLIENT, ipaddress.ip_address("100.64.0.1"), 1, 1)
    setup.send(ping)
    assert setup.at_resources() == [bytes(ping.data)]


def test_a_reload_that_adds_a_grant_applies_at_once_and_keeps_the_session(
    setup: Setup, control_sockets: tuple[socket.socket, socket.socket]
) -> None:
    syn = _syn(WEB, 80)
    setup.send(syn)
    assert setup.at_resources() == []
    setup.at_client()
    peer = setup.crypto.device.peer(public_key(CLIENT_KEY))
    assert peer is not None
    handshake, session = peer.last_handshake, peer.keypairs.current
    setup.path.write_text(_config_text(public_key(CLIENT_KEY), ["db", "v6", "web"]))
    control.send_reload(control_sockets[0], 1, load_config(setup.path))
    setup.crypto.on_control(NOW + 1)
    setup.send(syn, now=NOW + 1)
    assert setup.at_resources() == [bytes(syn.data)]
    assert (peer.last_handshake, peer.keypairs.current) == (handshake, session)
    assert setup.gateway.counters[st.HANDSHAKES_COMPLETED] == 1


def test_without_resources_the_loop_has_no_firewall_and_logs_it_once(
    tmp_path: Path,
    control_sockets: tuple[socket.socket, socket.socket],
    region: st.StatsRegion,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.dataplane.cryptomain")
    text = _config_text(public_key(CLIENT_KEY), [], resources=False)
    setup = Setup(tmp_path, control_sockets[1], region, text)
    assert setup.gateway.loop.firewall is None
    assert sum("no [[resources]] configured" in r.message for r in caplog.records) == 1
    syn = _syn(ELSEWHERE, 22)
    setup.send(syn)
    assert setup.at_resources() == [bytes(syn.data)]
    # Resources added by a reload switch the firewall on; removing them switches it off.
    setup.path.write_text(_config_text(public_key(CLIENT_KEY), ["db"]))
    control.send_reload(control_sockets[0], 1, load_config(setup.path))
    setup.crypto.on_control(NOW)
    assert setup.gateway.loop.firewall is setup.crypto.firewall
    setup.send(syn)
    assert setup.at_resources() == []
    setup.path.write_text(text)
    control.send_reload(control_sockets[0], 1, load_config(setup.path))
    setup.crypto.on_control(NOW)
    assert setup.gateway.loop.firewall is None


def test_peer_to_peer_is_denied_and_multicast_and_icmp_errors_from_peers_dropped(
    tmp_path: Path,
) -> None:
    key = tmp_path / "private.key"
    key.write_text(encode_key(generate_private_key()) + "\n")
    key.chmod(0o600)
    path = tmp_path / "gateway.toml"
    path.write_text(_config_text(public_key(CLIENT_KEY), ["db"]))
    other = public_key(generate_private_key())
    routes = Routes({CLIENT.packed: public_key(CLIENT_KEY), OTHER_CLIENT.packed: other})
    firewall = Firewall(build_policy(load_config(path)), routes)

    def from_me(packet: IpPacket) -> bytearray | None:
        return firewall.from_peer(bytearray(packet.data), NOW)

    assert from_me(udp_packet(CLIENT, OTHER_CLIENT, 1, 2)) is None  # another peer: prohibited
    assert len(firewall.take_replies()) == 1
    assert from_me(udp_packet(CLIENT, ipaddress.ip_address("224.0.0.251"), 5353, 5353)) is None
    answer = tcp_packet(DB, CLIENT, 5432, 1)
    error = destination_unreachable(answer, Unreachable.PORT, source=CLIENT)
    assert from_me(error) is None  # an ICMP error from a peer towards a resource
    assert firewall.take_replies() == []  # silently
    assert firewall.counts.policy_drops == 3
    assert from_me(udp_packet(CLIENT, DB, 1, 2)) is None  # udp to a tcp-only resource
    assert firewall.counts.policy_drops == 4
    garbage = bytearray(b"\x45" + bytes(30))
    assert firewall.from_peer(garbage, NOW) is None
    assert firewall.counts.malformed == 1


def test_packets_of_a_known_flow_are_counted_and_a_reload_revoking_it_stops_it(
    setup: Setup, control_sockets: tuple[socket.socket, socket.socket]
) -> None:
    packets = [_syn(DB, 5432) for _ in range(3)]  # after the first, the flow is known
    setup.send(*packets)
    assert len(setup.at_resources()) == 3
    setup.gateway.loop.turn(NOW + 2)
    (db,) = [r for r in setup.region.resources.read() if r.name == "db"]
    assert (db.allowed_packets, db.allowed_bytes) == (3, 3 * len(packets[0]))
    setup.path.write_text(_config_text(public_key(CLIENT_KEY), ["v6"]))
    control.send_reload(control_sockets[0], 1, load_config(setup.path))
    setup.crypto.on_control(NOW + 2)
    setup.send(packets[0], now=NOW + 2)
    assert setup.at_resources() == []
    assert len(setup.at_client()) == 1  # prohibited


def test_a_known_return_flow_does_not_follow_an_address_to_another_peer(tmp_path: Path) -> None:
    key = tmp_path / "private.key"
    key.write_text(encode_key(generate_private_key()) + "\n")
    key.chmod(0o600)
    path = tmp_path / "gateway.toml"
    path.write_text(_config_text(public_key(CLIENT_KEY), ["db"]))
    me, other = public_key(CLIENT_KEY), public_key(generate_private_key())
    routes = Routes({CLIENT.packed: me})
    firewall = Firewall(build_policy(load_config(path)), routes)
    answer = memoryview(bytearray(tcp_packet(DB, CLIENT, 5432, 40000).data))
    assert firewall.to_peer(answer, NOW) is not None
    assert firewall.to_peer(answer, NOW) is not None  # known flow
    routes.move(CLIENT.packed, other)  # `wg set` gave the address to a peer granted nothing
    assert firewall.to_peer(answer, NOW) is None
    assert firewall.counts.policy_drops == 1


def test_only_complete_plain_tcp_and_udp_packets_have_aflow_key() -> None:
    syn = bytearray(_syn(DB, 5432).data)
    assert flow_key(syn) == (6, bytes(syn[12:24]))
    v6 = bytearray(_syn(V6_HOST, 443).data)
    assert flow_key(v6) == (6, bytes(v6[8:44]))
    assert flow_key(bytearray(udp_packet(CLIENT, DB, 1, 2).data)) is not None
    assert flow_key(bytearray(icmp_echo_request(CLIENT, DB, 1, 1).data)) is None
    truncated = syn[:39]
    assert flow_key(truncated) is None
    bad_offset = bytearray(syn)
    bad_offset[32] = 0xF0  # a 60-byte TCP header in a 40-byte packet
    assert flow_key(bad_offset) is None
    fragment = bytearray(syn)
    fragment[6] |= 0x20  # more fragments
    assert flow_key(fragment) is None
    with_options = bytearray(syn)
    with_options[0] = 0x46
    assert flow_key(with_options) is None
