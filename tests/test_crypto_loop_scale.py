"""The crypto loop at scale: per-peer figures copied for changed peers only, idle peers cost
nothing, and timers looked at every turn (the heap makes it cheap)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from gateway.dataplane.crypto_telemetry import PeerStatsSync
from gateway.keys import generate_private_key, public_key
from gateway.telemetry import stats as st
from gateway.wireguard.constants import KEEPALIVE_TIMEOUT
from gateway.wireguard.device import Device
from gateway.wireguard.peer import Peer
from testbed.wire import A_ENDPOINT, A_INNER, B_ENDPOINT, B_INNER, ipv4_packet, make_wire
from tests.dataplane_fakes import LoopGateway, counter_block, peer_table, run_until_quiet

START = 1000.0


class NoScanDevice(Device):
    """Fails the test if anything looks at every peer."""

    scans_allowed = True

    def peers(self) -> Iterable[Peer]:
        assert self.scans_allowed, "looked at every peer"
        return super().peers()


def _net(address: str) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(f"{address}/32")


def _keys(n: int) -> list[bytes]:
    return [i.to_bytes(32, "little") for i in range(1, n + 1)]


def test_idle_loop_with_many_peers_sleeps_until_woken_and_copies_nothing() -> None:
    device = NoScanDevice(None)  # no key: peers cost no Diffie-Hellman
    for key in _keys(10_000):
        device.upsert_peer(key, now=START)
    gateway = LoopGateway(device, ("192.0.2.1", 51820))
    gateway.loop._peers = PeerStatsSync(peer_table(10_000), 0.0)
    device.scans_allowed = False
    assert gateway.loop.turn(START) is False  # first turn: every (new) peer gets its slot
    assert sum(1 for _ in gateway.loop._peers.table.read()) == 10_000
    assert not device.has_changed_peers
    assert gateway.loop.idle_timeout(START) is None  # no timer, nothing to copy: sleep
    assert gateway.loop.turn(START + 60) is False  # a stats interval later: nothing to copy
    assert gateway.loop.idle_timeout(START + 60) is None


def test_only_changed_peers_are_copied_and_removed_ones_released() -> None:
    wire = make_wire()
    table = peer_table(4)
    sync = PeerStatsSync(table, 0.0)
    idle_key = b"\x07" * 32
    wire.a.upsert_peer(idle_key, allowed_ips=[ipaddress.ip_network("10.7.0.0/24")], now=wire.now)
    block = counter_block()
    sync.sync(wire.a, block)
    idle = next(p for p in table.read() if p.public_key == idle_key)
    idle_slot = next(s for s in range(4) if table._read_slot(s) == idle)
    table.words[table.base(idle_slot) + st.PEER_RX_PACKETS] = 12345  # a sentinel

    assert wire.send_a_to_b() is not None
    sync.sync(wire.a, block)
    figures = {p.public_key: p for p in table.read()}
    (busy,) = (p for p in wire.a.peers() if p.public_key != idle_key)
    assert figures[busy.public_key].tx_packets == busy.tx_packets > 0
    assert figures[idle_key].rx_packets == 12345  # the idle peer's slot was not rewritten

    wire.a.remove_peer(idle_key)
    sync.sync(wire.a, block)
    assert {p.public_key for p in table.read()} == {busy.public_key}


def test_a_restarted_crypto_process_keeps_the_slots_of_its_peers() -> None:
    table = peer_table(4)
    kept, gone = _keys(2)
    kept_slot = table.assign(kept)
    assert kept_slot is not None
    table.assign(gone)  # both left by the crypto process that died
    device = Device(None)
    device.upsert_peer(kept, now=START)
    PeerStatsSync(table, 0.0).sync(device, counter_block())
    assert [p.public_key for p in table.read()] == [kept]
    assert table._read_slot(kept_slot) is not None  # the same slot, not a second one


def test_a_busy_loop_runs_a_timer_on_the_turn_it_falls_due() -> None:
    key_a, key_b = generate_private_key(), generate_private_key()
    device_a, device_b = Device(key_a), Device(key_b)
    device_a.upsert_peer(
        public_key(key_b), endpoint=B_ENDPOINT, allowed_ips=[_net(B_INNER)], now=START
    )
    device_b.upsert_peer(public_key(key_a), allowed_ips=[_net(A_INNER)], now=START)
    a, b = LoopGateway(device_a, A_ENDPOINT), LoopGateway(device_b, B_ENDPOINT)
    assert a.rings.from_workers[0].send(ipv4_packet(A_INNER, B_INNER))
    run_until_quiet(a, b, START)
    assert b.udp_out() == []
    due = device_b.next_deadline()  # B owes A a keepalive for the packet it got
    assert due == START + KEEPALIVE_TIMEOUT
    b.loop.turn(due - 0.001)  # busy turns just before and at the deadline
    assert b.udp_out() == []
    b.loop.turn(due)
    assert [endpoint for endpoint, _ in b.udp_out()] == [A_ENDPOINT]
