"""DNS resources answered with proxy addresses after a lookup of the real ones."""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Sequence

import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset

from gateway.dns.forwarder import Client, Forwarder, ToClient, ToUpstream, Transport
from gateway.dns.resources import (
    MAPPING_IDLE,
    MAX_QUEUED_PER_PEER,
    MAX_RESOLVING_PER_PEER,
    MAX_WAITING_PER_NAME,
    ProxyMapping,
    ResourceAnswers,
)
from gateway.resources.names import parse_name_pattern
from gateway.resources.proxy_ranges import IPV4_RANGE, IPV6_RANGE

UP = ("10.98.0.2", 53)
ALICE = Client(Transport.UDP, "100.64.0.2", 40000)
BOB = Client(Transport.UDP, "100.64.0.3", 40000)
PEERS = {"100.64.0.2": "alice", "100.64.0.3": "bob"}
APP, WILD = 0, 1


BOB_GRANTED = Client(Transport.UDP, "100.64.0.4", 40000)
PEERS["100.64.0.4"] = "bob2"


def answers(forwarder: Forwarder | None = None) -> ResourceAnswers:
    return ResourceAnswers(
        [(APP, parse_name_pattern("app.corp.test")), (WILD, parse_name_pattern("*.corp.test"))],
        {"alice": [APP, WILD], "bob": [], "bob2": [WILD]},
        PEERS.get,
        forwarder if forwarder is not None else Forwarder([UP], rng=random.Random(1)),
    )


def query(name: str, rdtype: str = "A", ident: int = 99) -> bytes:
    message = dns.message.make_query(name, rdtype)
    message.id = ident
    return message.to_wire()


def upstream_answer(sent: bytes, records: list[str]) -> bytes:
    request = dns.message.from_wire(sent)
    response = dns.message.make_response(request)
    question = request.question[0]
    if records:
        response.answer.append(
            dns.rrset.from_text(question.name, 300, "IN", question.rdtype, *records)
        )
    return response.to_wire()


def resolve(
    table: ResourceAnswers, events: Sequence[object], v4: list[str], v6: list[str]
) -> list[object]:
    """Answer the gateway's A and AAAA lookups in `events` as an upstream would."""
    out: list[object] = []
    for event in events:
        assert isinstance(event, ToUpstream), event
        rdtype = dns.message.from_wire(event.wire).question[0].rdtype
        records = v4 if rdtype == dns.rdatatype.A else v6
        reply = table.forwarder.handle_response(
            event.upstream, event.transport, upstream_answer(event.wire, records), 1.0
        )
        assert isinstance(reply, ToClient)
        assert not isinstance(reply.client, Client)
        out.extend(table.handle_lookup(reply.client, reply.wire, 1.0))
    return out


def records(wire: bytes) -> list[str]:
    return [r.to_text() for rrset in dns.message.from_wire(wire).answer for r in rrset]


def test_granted_peer_gets_proxy_addresses_after_the_mapping() -> None:
    table = answers()
    lookups = table.handle_query(ALICE, query("app.corp.test", "A"), 0.0)
    assert len(lookups) == 2  # A and AAAA of the real name
    mapping, answer = resolve(table, lookups, ["10.98.0.5"], [])
    assert isinstance(mapping, ProxyMapping)
    assert mapping.resource == APP
    assert mapping.real_v4 == (ipaddress.IPv4Address("10.98.0.5"),)
    assert mapping.real_v6 == ()
    assert isinstance(answer, ToClient) and answer.client == ALICE
    (proxy,) = records(answer.wire)
    assert ipaddress.ip_address(proxy) == mapping.proxies.v4
    assert ipaddress.ip_address(proxy) in IPV4_RANGE
    assert dns.message.from_wire(answer.wire).id == 99
    # AAAA right after: answered from the mapping, no new lookup.
    (aaaa,) = table.handle_query(ALICE, query("app.corp.test", "AAAA"), 2.0)
    assert isinstance(aaaa, ToClient)
    assert ipaddress.ip_address(records(aaaa.wire)[0]) in IPV6_RANGE
    # Other types: no records, nothing forwarded.
    (mx,) = table.handle_query(ALICE, query("app.corp.test", "MX"), 2.0)
    assert isinstance(mx, ToClient) and records(mx.wire) == []


def test_wildcard_and_most_specific_resource() -> None:
    table = answers()
    events = table.handle_query(ALICE, query("db.corp.test"), 0.0)
    mapping, _ = resolve(table, events, ["10.98.0.6"], ["fd00:98::6"])
    assert isinstance(mapping, ProxyMapping) and mapping.resource == WILD
    events = table.handle_query(ALICE, query("app.corp.test"), 0.0)
    mapping, _ = resolve(table, events, ["10.98.0.5"], [])
    assert isinstance(mapping, ProxyMapping) and mapping.resource == APP


def test_peer_without_the_grant_is_forwarded_like_any_name() -> None:
    table = answers()
    (forwarded,) = table.handle_query(BOB, query("app.corp.test"), 0.0)
    assert isinstance(forwarded, ToUpstream)
    assert dns.message.from_wire(forwarded.wire).question[0].name == dns.name.from_text(
        "app.corp.test"
    )
    unknown = Client(Transport.UDP, "100.64.0.99", 1)
    (forwarded,) = table.handle_query(unknown, query("app.corp.test"), 0.0)
    assert isinstance(forwarded, ToUpstream)


def test_other_names_are_forwarded() -> None:
    (forwarded,) = answers().handle_query(ALICE, query("example.test"), 0.0)
    assert isinstance(forwarded, ToUpstream)


def test_queries_during_a_lookup_wait_for_it() -> None:
    table = answers()
    events = table.handle_query(ALICE, query("app.corp.test", ident=1), 0.0)
    second = Client(Transport.UDP, "100.64.0.2", 40001)
    assert table.handle_query(second, query("app.corp.test", "AAAA", ident=2), 0.1) == []
    out = resolve(table, events, ["10.98.0.5"], ["fd00:98::5"])
    clients = [e.client for e in out if isinstance(e, ToClient)]
    assert clients == [ALICE, second]
    assert table.waiting == 0


def test_name_without_addresses_gets_servfail_and_no_mapping() -> None:
    table = answers()
    events = table.handle_query(ALICE, query("gone.corp.test"), 0.0)
    (failure,) = resolve(table, events, [], [])
    assert isinstance(failure, ToClient)
    assert dns.message.from_wire(failure.wire).rcode() == dns.rcode.SERVFAIL


def test_no_upstream_fails_at_once() -> None:
    table = answers(Forwarder([]))
    (failure,) = table.handle_query(ALICE, query("app.corp.test"), 0.0)
    assert isinstance(failure, ToClient)
    assert dns.message.from_wire(failure.wire).rcode() == dns.rcode.SERVFAIL
    assert table.waiting == 0


def test_stale_mapping_is_looked_up_again() -> None:
    table = answers()
    resolve(table, table.handle_query(ALICE, query("app.corp.test"), 0.0), ["10.98.0.5"], [])
    again = table.handle_query(ALICE, query("app.corp.test"), 100.0)
    assert len(again) == 2 and all(isinstance(e, ToUpstream) for e in again)


def two_resources() -> ResourceAnswers:
    """Issue 19's shape: `app.corp.test` as "app" (alice), under `*.corp.test` as "corp" (bob)."""
    return ResourceAnswers(
        [(APP, parse_name_pattern("app.corp.test")), (WILD, parse_name_pattern("*.corp.test"))],
        {"alice": [APP], "bob": [WILD]},
        PEERS.get,
        Forwarder([UP], rng=random.Random(2)),
    )


def test_a_name_under_two_resources_keeps_each_peers_mapping() -> None:
    table = two_resources()
    a_map, _ = resolve(
        table, table.handle_query(ALICE, query("app.corp.test"), 0.0), ["10.98.0.5"], []
    )
    b_map, _ = resolve(
        table, table.handle_query(BOB, query("app.corp.test"), 0.5), ["10.98.0.5"], []
    )
    assert isinstance(a_map, ProxyMapping) and isinstance(b_map, ProxyMapping)
    assert (a_map.resource, b_map.resource) == (APP, WILD)
    assert a_map.proxies != b_map.proxies  # bob's question did not re-map alice's pair
    assert {m.resource for m in table.live_mappings()} == {APP, WILD}
    # Each asks again: each gets its own pair back, nothing is re-mapped.
    (again_a,) = table.handle_query(ALICE, query("app.corp.test"), 1.0)
    (again_b,) = table.handle_query(BOB, query("app.corp.test"), 1.0)
    assert isinstance(again_a, ToClient) and records(again_a.wire) == [str(a_map.proxies.v4)]
    assert isinstance(again_b, ToClient) and records(again_b.wire) == [str(b_map.proxies.v4)]


def test_a_peer_holds_a_bounded_number_of_mappings_and_unused_ones_expire() -> None:
    table = ResourceAnswers(
        [(WILD, parse_name_pattern("*.corp.test"))],
        {"alice": [WILD], "bob": [WILD]},
        PEERS.get,
        Forwarder([UP], rng=random.Random(3)),
        max_names_per_peer=10,
    )
    resolve(table, table.handle_query(BOB, query("kept.corp.test"), 0.0), ["10.98.0.9"], [])
    for i in range(30):
        resolve(table, table.handle_query(ALICE, query(f"n{i}.corp.test"), 0.0), ["10.98.0.5"], [])
    assert table.held_by("alice") == 10
    assert len(table) == 11 and len(table.proxies) == 11  # alice's 10 and bob's one
    names = {str(m.name) for m in table.live_mappings()}
    assert "kept.corp.test." in names and "n29.corp.test." in names and "n0.corp.test." not in names
    # Nobody asks any more: after Firezone's longest NAT lifetime they are all freed.
    assert table.expire(1000.0) == 0
    assert table.expire(MAPPING_IDLE + 1.0) == 11
    assert len(table) == 0 and len(table.proxies) == 0 and table.held_by("alice") == 0


def test_queries_waiting_on_one_name_and_one_peers_lookups_are_bounded() -> None:
    table = answers()
    table.handle_query(ALICE, query("slow.corp.test", ident=0), 0.0)
    refused = 0
    for i in range(1, 200):
        client = Client(Transport.UDP, "100.64.0.2", 40000 + i)
        out = table.handle_query(client, query("slow.corp.test", ident=i), 0.0)
        refused += bool(out)
    assert table.waiting == MAX_WAITING_PER_NAME and refused == 200 - MAX_WAITING_PER_NAME
    # One peer's new names: MAX_RESOLVING_PER_PEER looked up at once (slow.corp.test is
    # one), the next wait their turn, beyond MAX_QUEUED_PER_PEER refused.
    started = []
    for i in range(MAX_RESOLVING_PER_PEER + MAX_QUEUED_PER_PEER + 5):
        started += table.handle_query(ALICE, query(f"new{i}.corp.test", ident=i), 0.0)
    assert table.forwarder.counters["servfail_client_quota"] == 6
    assert len(started) == 2 * (MAX_RESOLVING_PER_PEER - 1) + 6  # lookups, and the refusals
    # Bob is not behind alice's queue.
    assert len(table.handle_query(BOB_GRANTED, query("bob.corp.test"), 0.0)) == 2
    # One of alice's lookups finishes: the first queued name starts, in order of arrival.
    first = [e for e in started if isinstance(e, ToUpstream)][:2]
    out = resolve(table, first, ["10.98.0.5"], [])
    mapping, answer, *next_lookups = out
    assert isinstance(mapping, ProxyMapping) and str(mapping.name) == "new0.corp.test."
    assert isinstance(answer, ToClient)
    assert [str(dns.message.from_wire(e.wire).question[0].name).lower() for e in next_lookups] == [
        f"new{MAX_RESOLVING_PER_PEER - 1}.corp.test."
    ] * 2
    assert table.forwarder.in_flight == 2 * MAX_RESOLVING_PER_PEER + 2  # and bob's
