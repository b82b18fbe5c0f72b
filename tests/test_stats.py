from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway import topology
from gateway.telemetry import stats
from gateway.telemetry.stats import StatsRegion
from shm_ring import Ring


def _unique() -> str:
    return f"fzo-stats-{os.getpid()}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def region() -> Iterator[StatsRegion]:
    reg = StatsRegion.create(_unique(), workers=2, max_peers=4, dns=True)
    try:
        yield reg
    finally:
        reg.close()
        reg.unlink()


def _run_child(region: StatsRegion, role: str, packets: int) -> int:
    pid = os.fork()
    if pid == 0:  # child: count like a data-plane loop would, then leave without cleanup
        code = 1
        try:
            c = region.attach_process(role)
            for _ in range(packets):
                c[stats.UDP_RX_PACKETS] += 1
                c[stats.UDP_RX_BYTES] += 100
            c[stats.DROP_DECRYPT_FAILED] += 2
            c[stats.BUSY_NS] += 5
            code = 0
        finally:
            os._exit(code)
    return pid


def test_forked_children_counters_are_summed(region: StatsRegion) -> None:
    pids = [_run_child(region, role, n) for role, n in (("worker0", 10), ("worker1", 20))]
    pids.append(_run_child(region, "crypto", 30))
    for pid in pids:
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    sup = region.attach_process("supervisor")
    sup[stats.CHILD_RESTARTS] += 1
    snap = region.snapshot()
    assert snap.totals.udp_rx_packets == 60
    assert snap.totals.udp_rx_bytes == 6000
    assert snap.totals.child_restarts == 1
    assert snap.drops["decrypt_failed"] == 6
    assert snap.drops["replay"] == 0
    assert set(snap.drops) == set(stats.DROP_REASONS)
    assert snap.process("worker1").counters.udp_rx_packets == 20
    assert snap.process("worker0").pid == pids[0]
    assert snap.process("udp").pid == 0
    assert snap.process("udp").busy_fraction is None
    # the supervisor is alive, so psutil sees it; the children have exited
    assert snap.process("supervisor").rss_bytes is not None
    assert snap.process("supervisor").cpu_seconds is not None
    assert snap.process("worker0").rss_bytes is None


def test_blocks_do_not_overlap(region: StatsRegion) -> None:
    for index, role in enumerate(region.roles):
        region.process_block(role)[stats.UDP_TX_PACKETS] = index + 1
    for index, ring in enumerate(region.ring_names):
        block = region.ring_block(ring)
        block[stats.RING_FULL_EVENTS] = 100 + index
        block[stats.RING_CAPACITY] = 1000
        block[stats.RING_OCCUPANCY] = index
    snap = region.snapshot(sample_processes=False)
    assert [p.counters.udp_tx_packets for p in snap.processes] == [1, 2, 3, 4, 5, 6]
    assert [r.name for r in snap.rings] == [
        "worker0_to_crypto",
        "crypto_to_worker0",
        "worker1_to_crypto",
        "crypto_to_worker1",
        "crypto_to_udp",
        "udp_to_crypto",
    ]
    assert [r.full_events for r in snap.rings] == [100, 101, 102, 103, 104, 105]
    assert all(r.capacity == 1000 for r in snap.rings)
    assert snap.peers == ()


def test_ring_block_holds_the_rings_packets_and_wake_ups(region: StatsRegion) -> None:
    with Ring.create("stats-copy", slots=4, slot_size=64) as ring:
        assert ring.consumer_arm()  # the consumer sleeps: the next send must wake it
        assert ring.send(b"x")
        ring.consumer_disarm()
        stats.copy_ring_counters(region.ring_block("crypto_to_udp"), ring.stats())
    block = region.ring_block("crypto_to_udp")
    assert block[stats.RING_PACKETS] == 1
    assert block[stats.RING_CONSUMER_WAKEUPS] == 1
    assert block[stats.RING_PRODUCER_WAKEUPS] == 0
    assert block[stats.RING_CAPACITY] == 4
    assert block[stats.RING_OCCUPANCY] == 1


def test_peer_table(region: StatsRegion) -> None:
    table = region.peers
    keys = [bytes([i]) * 32 for i in range(5)]
    slots = [table.assign(k) for k in keys[:4]]
    assert None not in slots
    assert table.assign(keys[4]) is None  # full
    slot = slots[1]
    assert slot is not None
    base = table.base(slot)
    table.words[base + stats.PEER_RX_BYTES] += 1234
    table.words[base + stats.PEER_TX_PACKETS] += 3
    table.set_endpoint(slot, "[2001:db8::1]:51820")
    table.set_last_handshake(slot, 1_700_000_000_500_000_000)
    peers = {p.public_key: p for p in region.snapshot(sample_processes=False).peers}
    assert len(peers) == 4
    peer = peers[keys[1]]
    assert (peer.rx_bytes, peer.tx_packets, peer.endpoint) == (1234, 3, "[2001:db8::1]:51820")
    assert peer.last_handshake == pytest.approx(1_700_000_000.5)
    assert peers[keys[0]].endpoint == ""
    table.release(slot)
    with pytest.raises(ValueError, match="not in use"):
        table.release(slot)
    again = table.assign(keys[4])
    assert again == slot  # reused, with zeroed counters
    peers = {p.public_key: p for p in region.snapshot(sample_processes=False).peers}
    assert keys[1] not in peers
    assert peers[keys[4]].rx_bytes == 0
    assert peers[keys[4]].endpoint == ""
    table.set_endpoint(again, "x" * 100)
    peers = {p.public_key: p for p in region.snapshot(sample_processes=False).peers}
    assert peers[keys[4]].endpoint == "x" * 64
    with pytest.raises(ValueError, match="32 bytes"):
        table.assign(b"short")


def test_busy_fraction_over_window(region: StatsRegion) -> None:
    crypto = region.attach_process("crypto")
    started = crypto[stats.STARTED_MONO_NS]
    second = 1_000_000_000
    crypto[stats.BUSY_NS] += second // 2  # busy half of the first 1 s
    snap = region.snapshot(sample_processes=False, now_ns=started + second)
    assert snap.crypto_busy_fraction == pytest.approx(0.5)
    # sampled once a second for 20 s, busy 10% of each second: the window shows 10%
    for i in range(1, 21):
        region.sample_busy(started + i * second)
        crypto[stats.BUSY_NS] += second // 10
    snap = region.snapshot(sample_processes=False, now_ns=started + 21 * second)
    assert snap.crypto_busy_fraction == pytest.approx(0.1)
    # a restarted crypto process: the fraction starts from its own start
    crypto = region.attach_process("crypto")
    restarted = started + 30 * second  # keep the test's clock: restart at 30 s
    crypto[stats.STARTED_MONO_NS] = restarted
    crypto[stats.BUSY_NS] += second // 4
    snap = region.snapshot(sample_processes=False, now_ns=restarted + second)
    assert snap.crypto_busy_fraction == pytest.approx(0.25)


def test_attach_from_another_process_leaves_segment(region: StatsRegion) -> None:
    region.attach_process("udp")[stats.GSO_BATCHES] += 7
    code = (
        "import sys; from gateway.telemetry.stats import StatsRegion;"
        "r = StatsRegion.attach(sys.argv[1]); s = r.snapshot();"
        "print(s.workers, s.totals.gso_batches); r.close()"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, region.name], capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["2", "7"]
    assert "leaked" not in out.stderr
    again = StatsRegion.attach(region.name)  # still there
    assert again.snapshot(sample_processes=False).totals.gso_batches == 7
    with pytest.raises(RuntimeError, match="created"):
        again.unlink()
    again.close()


def test_attach_rejects_foreign_segment(tmp_path: Path) -> None:
    (tmp_path / "foreign").write_bytes(bytes(4096))
    with pytest.raises(ValueError, match="not a firezone-gw stats segment"):
        StatsRegion.attach("foreign", directory=tmp_path)


@pytest.mark.parametrize(("workers", "max_peers"), [(0, 10), (257, 10), (1, 0)])
def test_create_rejects_bad_sizes(workers: int, max_peers: int) -> None:
    with pytest.raises(ValueError, match="must be"):
        StatsRegion.create(_unique(), workers=workers, max_peers=max_peers)


def test_large_peer_table_size() -> None:
    reg = StatsRegion.create(_unique(), workers=4, max_peers=65536)
    try:
        assert reg.snapshot(sample_processes=False).max_peers == 65536
    finally:
        reg.close()
        reg.unlink()


def test_restarted_crypto_adopts_peer_slots(region: StatsRegion) -> None:
    key = b"\x07" * 32
    pid = os.fork()
    if pid == 0:  # the first crypto process assigns a slot and counts, then dies
        code = 1
        try:
            slot = region.peers.assign(key)
            assert slot is not None
            region.peers.words[region.peers.base(slot) + stats.PEER_RX_BYTES] += 99
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    owned = region.peers.adopt()  # the restarted one (same inherited object)
    assert list(owned) == [key]
    others = [region.peers.assign(bytes([i]) * 32) for i in range(3)]
    assert owned[key] not in others
    assert region.peers.assign(b"\x09" * 32) is None  # 4 slots: all taken
    peers = {p.public_key: p for p in region.snapshot(sample_processes=False).peers}
    assert peers[key].rx_bytes == 99
    assert region.process_block("udp") is region.process_block("udp")


def test_resource_table_finds_slots_by_name_across_processes(region: StatsRegion) -> None:
    table = region.resources
    db = table.slot_for("db")
    assert db is not None
    table.add(db, 3, 300, 2)
    # A restarted crypto process (the same segment, no memory of its predecessor's slots)
    # asks by name again and finds the same slot, so the counters continue.
    assert table.slot_for("db") == db
    web = table.slot_for("web")
    assert web not in (None, db)
    by_name = {r.name: r for r in region.snapshot(sample_processes=False).resources}
    assert (by_name["db"].allowed_packets, by_name["db"].allowed_bytes) == (3, 300)
    assert by_name["db"].denied_packets == 2
    assert by_name["web"].allowed_packets == 0
    table.release(db)
    assert [r.name for r in region.snapshot(sample_processes=False).resources] == ["web"]


def test_the_dns_process_block_holds_dns_counters_not_drops(region: StatsRegion) -> None:
    assert region.snapshot(sample_processes=False).dns == {}  # no DNS server ran
    block = region.attach_process("dns")
    block[stats.DNS_BASE + stats.DNS_COUNTER_NAMES.index("queries")] = 7
    block[stats.DNS_BASE + stats.DNS_COUNTER_NAMES.index("in_flight")] = 2
    snap = region.snapshot(sample_processes=False)
    assert snap.dns["queries"] == 7
    assert snap.dns["in_flight"] == 2
    assert sum(snap.drops.values()) == 0


def test_the_segment_has_a_dns_block_only_when_a_dns_server_runs(region: StatsRegion) -> None:
    without = StatsRegion.create(_unique(), workers=2, max_peers=4)
    try:
        assert topology.DNS not in without.roles
        assert region.roles == (*without.roles, topology.DNS)
        with pytest.raises(ValueError, match="not in tuple"):
            without.process_block(topology.DNS)
        small = without.path.stat().st_size
        assert small == region.path.stat().st_size - 8 * stats.PROCESS_BLOCK_WORDS
        with open(without.path, "rb") as handle:
            assert not stats.read_header(handle.fileno(), small, without.name).dns
        for segment in (region, without):
            segment.process_block("crypto")[stats.UDP_RX_PACKETS] = 3
        # What a reader gets is the same while no DNS server ran (so is /metrics).
        a = region.snapshot(sample_processes=False, now_ns=1)
        b = without.snapshot(sample_processes=False, now_ns=1)
        assert (a.totals, a.drops, a.dns, a.nat) == (b.totals, b.drops, b.dns, b.nat)
        assert [p.role for p in a.processes if p.role != "dns"] == [p.role for p in b.processes]
    finally:
        without.close()
        without.unlink()


def test_each_process_block_has_its_named_layout_without_overlaps() -> None:
    layouts = {role: stats.block_layout(role) for role in ("worker0", "crypto", "udp", "dns")}
    assert layouts["crypto"].nat == stats.NAT and layouts["worker0"].nat is None
    assert layouts["dns"].drops is None and layouts["dns"].dns == stats.DNS
    for layout in layouts.values():
        words = [w for section in layout.sections for w in range(section.base, section.end)]
        assert len(words) == len(set(words))
        assert max(words) < stats.PROCESS_BLOCK_WORDS
    assert stats.COUNTERS.end == len(stats.COUNTER_NAMES) == 20
