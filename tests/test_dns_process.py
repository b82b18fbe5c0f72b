"""The DNS process's pieces that are not its sockets: heartbeat, server from config, counters."""

from __future__ import annotations

import asyncio
import ipaddress
import threading
from pathlib import Path

import dns.message

from gateway.config import parse_config_text
from gateway.dataplane.dnsmain import DnsCounterSync, HeartbeatSelector, build_server
from gateway.dataplane.heartbeat import Heartbeat
from gateway.dataplane.mappings import MappingPair, MappingSender, PeerAnnouncer
from gateway.dns.forwarder import Client, Forwarder, Transport
from gateway.dns.server import DnsServer
from gateway.keys import encode_key, generate_private_key
from gateway.telemetry import stats as st
from gateway.wireguard.device import Device


def test_the_event_loop_is_seen_asleep_while_it_waits_and_awake_while_it_works() -> None:
    heartbeat = Heartbeat.detached()
    loop = asyncio.SelectorEventLoop(HeartbeatSelector(heartbeat))
    seen: dict[str, bool] = {}
    watcher = threading.Timer(0.3, lambda: seen.setdefault("waiting", heartbeat.is_asleep()))
    try:
        loop.call_soon(lambda: seen.setdefault("working", heartbeat.is_asleep()))
        watcher.start()
        before = heartbeat.progress()
        loop.run_until_complete(asyncio.sleep(0.6))
    finally:
        watcher.join()
        loop.close()
    assert seen == {"working": False, "waiting": True}
    assert heartbeat.progress() > before


def test_the_server_listens_on_every_tunnel_address_and_knows_peers_by_allowed_ips(
    tmp_path: Path,
) -> None:
    key = tmp_path / "private.key"
    key.write_text(encode_key(generate_private_key()) + "\n")
    key.chmod(0o600)
    granted, other = encode_key(generate_private_key()), encode_key(generate_private_key())
    config = parse_config_text(
        '[interface]\nname = "fzdns0"\nprivate_key_file = "private.key"\nlisten_port = 51820\n'
        'addresses = ["100.90.0.1/24", "fd00:90::1/64"]\n[metrics]\nlisten = "127.0.0.1:9586"\n'
        '[dns]\nport = 5353\nupstreams = ["192.0.2.53"]\n'
        '[[resources]]\nname = "app"\naddress = "app.corp.test"\n'
        f'[[peers]]\npublic_key = "{granted}"\nallowed_ips = ["100.90.0.2/32"]\n'
        'resources = ["app"]\n'
        f'[[peers]]\npublic_key = "{other}"\nallowed_ips = ["100.90.0.3/32"]\n',
        base_dir=tmp_path,
        source="gateway.toml",
    )
    server = build_server(config, None)
    assert server.listen == (("100.90.0.1", 5353), ("fd00:90::1", 5353))
    assert server.forwarder.upstreams == (("192.0.2.53", 53),)
    assert server.resources is not None


def test_counters_are_copied_as_deltas_and_in_flight_as_a_gauge() -> None:
    block = memoryview(bytearray(8 * st.PROCESS_BLOCK_WORDS)).cast("Q")
    names = st.DNS_COUNTER_NAMES
    queries = st.DNS_BASE + names.index("queries")
    in_flight = st.DNS_BASE + names.index("in_flight")
    block[queries] = 100  # what a crashed predecessor counted: kept, added to
    server = DnsServer(Forwarder([("192.0.2.53", 53)]), [])
    sync = DnsCounterSync(block)
    query = dns.message.make_query("www.corp.test", "A").to_wire()
    server.forwarder.handle_query(Client(Transport.UDP, "100.90.0.2", 5000), query, 0.0)
    sync.sync(server, None)
    assert (block[queries], block[in_flight]) == (101, 1)
    server.forwarder.handle_query(Client(Transport.UDP, "100.90.0.2", 5001), query, 0.0)
    server.forwarder.expire(60.0)  # both time out: SERVFAIL, nothing in flight
    sync.sync(server, None)
    assert (block[queries], block[in_flight]) == (102, 0)
    assert block[st.DNS_BASE + names.index("servfail_timeout")] == 2


def test_peers_moved_with_wg_set_are_known_by_their_new_addresses(tmp_path: Path) -> None:
    """Issue 19: the DNS process knew peers only from the config at start."""
    key = tmp_path / "private.key"
    key.write_text(encode_key(generate_private_key()) + "\n")
    key.chmod(0o600)
    peer_key = generate_private_key()  # any 32 bytes serve as a peer's public key here
    config = parse_config_text(
        '[interface]\nname = "fzdns1"\nprivate_key_file = "private.key"\nlisten_port = 51820\n'
        'addresses = ["100.90.0.1/24"]\n[metrics]\nlisten = "127.0.0.1:9586"\n'
        '[dns]\nport = 5353\nupstreams = ["192.0.2.53"]\n'
        f'[[peers]]\npublic_key = "{encode_key(peer_key)}"\nallowed_ips = ["100.90.0.2/32"]\n',
        base_dir=tmp_path,
        source="gateway.toml",
    )
    pair = MappingPair.create()
    try:
        sender = MappingSender(pair.dns)
        server = build_server(config, sender)
        assert server.peer_of is not None
        assert server.peer_of("100.90.0.2") == peer_key
        assert server.peer_of("100.90.7.7") is None
        device = Device(generate_private_key())
        device.upsert_peer(peer_key, allowed_ips=[ipaddress.ip_network("100.90.7.0/24")], now=0.0)
        PeerAnnouncer(pair.crypto, device).started()  # a crypto process after `wg set`
        sender.receive()
        assert server.peer_of("100.90.7.7") == peer_key
        assert server.peer_of("100.90.0.2") is None
    finally:
        pair.close()
