"""DNS resources' NAT entries across a takeover (issue 23): the active's entries reach the
standby (made, confirmed, removed), and the taker keeps each flow's outside port, so the
real host's connection goes on."""

from __future__ import annotations

import ipaddress
from typing import cast

from gateway.dataplane.hamain import ProxyReplica, nat_change
from gateway.ha.codec import NatEntry, NatGone
from gateway.ha.node import ACTIVE, HaNode
from gateway.nat.handler import ProxyHandler
from gateway.nat.table import IPPROTO_TCP, TCP_TTL, Inside, NatTable, Outside
from gateway.wireguard.device import Device

PEER = b"k" * 32
ip = ipaddress.ip_address
REAL = ip("192.0.2.80")


class _Proxy:
    """What ProxyReplica uses of a ProxyHandler: its NAT table."""

    def __init__(self, table: NatTable) -> None:
        self.table = table


def _flow(table: NatTable, port: int, now: float) -> Outside:
    inside = Inside(PEER, IPPROTO_TCP, ip("100.64.0.2"), port, ip("100.96.0.1"), 443)
    entry = table.outbound(
        inside, REAL, outside_protocol=IPPROTO_TCP, outside_source=ip("10.0.0.1"), now=now
    )
    assert not isinstance(entry, str)
    return entry.outside


def test_an_entry_restored_elsewhere_keeps_its_outside_port_and_state() -> None:
    active, standby = NatTable(), NatTable()
    outside = _flow(active, 40000, 0.0)
    active.inbound(outside, 0.5)  # answered: confirmed, TCP lifetime
    (entry,) = active.entries()
    change = nat_change(entry, 1.0)
    assert change is not None and change.confirmed and change.ttl == TCP_TTL - 0.5
    replica = ProxyReplica(cast(ProxyHandler, _Proxy(standby)))
    assert replica.restore_nat(change, 100.0 + change.ttl)
    restored = standby.inbound(outside, 101.0)  # the real host's next reply maps back
    assert restored is not None and restored.inside == entry.inside
    assert not replica.restore_nat(change, 200.0)  # taken: not twice
    assert standby.expire(100.0 + TCP_TTL + 2) == 1  # and it expires like its own


def test_the_active_streams_made_confirmed_and_removed_entries() -> None:
    table = NatTable()
    node = HaNode(
        Device(None),
        lambda: None,
        role=ACTIVE,
        rate=1 << 20,
        proxy=ProxyReplica(cast(ProxyHandler, _Proxy(table))),
    )
    node.resync(0.0)
    node.tick(0.0, 0.0)
    outside = _flow(table, 40001, 0.1)
    batch = node.tick(1.1, 1.1)
    assert batch is not None
    (made,) = [c for c in batch.changes if isinstance(c, NatEntry)]
    assert not made.confirmed and made.outside_port == outside.source_port
    table.outbound(  # a packet only moves its lifetime: nothing to send
        made_inside := table.entries()[0].inside,
        REAL,
        outside_protocol=IPPROTO_TCP,
        outside_source=ip("10.0.0.1"),
        now=1.5,
    )
    assert node.tick(2.2, 2.2) is None
    table.inbound(outside, 2.5)
    batch = node.tick(3.3, 3.3)
    assert batch is not None and [c.confirmed for c in batch.changes] == [True]
    table.inbound(outside, 3.5, tcp_flags=0x04)  # RST: the entry ends
    batch = node.tick(4.4, 4.4)
    assert batch is not None
    (gone,) = batch.changes
    assert isinstance(gone, NatGone) and gone.flow.source_port == made_inside.source_port


def test_a_takeover_restores_the_mirrored_entries() -> None:
    active_table, standby_table = NatTable(), NatTable()
    nodes = [
        HaNode(
            Device(None),
            lambda: None,
            role=role,
            rate=1 << 20,
            proxy=ProxyReplica(cast(ProxyHandler, _Proxy(table))),
        )
        for role, table in ((ACTIVE, active_table), ("standby", standby_table))
    ]
    outside = _flow(active_table, 40002, 0.0)
    active, standby = nodes
    standby.begin_resync()
    active.resync(0.0)
    batch = active.tick(0.1, 0.1)
    assert batch is not None
    standby.receive(batch, 10.0, 0.2)
    assert len(standby_table) == 0  # kept aside until it takes over
    standby.set_role(ACTIVE, 10.5)
    assert standby_table.find(outside) is not None
