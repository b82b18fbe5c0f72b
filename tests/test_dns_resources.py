"""DNS resources answered with proxy addresses after a lookup of the real ones."""

from __future__ import annotations

import ipaddress
import random

import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset

from gateway.dns.forwarder import Client, Forwarder, ToClient, ToUpstream, Transport
from gateway.dns.resources import ProxyMapping, ResourceAnswers
from gateway.resources.names import parse_name_pattern
from gateway.resources.proxy_ranges import IPV4_RANGE, IPV6_RANGE

UP = ("10.98.0.2", 53)
ALICE = Client(Transport.UDP, "100.64.0.2", 40000)
BOB = Client(Transport.UDP, "100.64.0.3", 40000)
PEERS = {"100.64.0.2": "alice", "100.64.0.3": "bob"}
APP, WILD = 0, 1


def answers(forwarder: Forwarder | None = None) -> ResourceAnswers:
    return ResourceAnswers(
        [(APP, parse_name_pattern("app.corp.test")), (WILD, parse_name_pattern("*.corp.test"))],
        {"alice": [APP, WILD], "bob": []},
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
    table: ResourceAnswers, events: list[object], v4: list[str], v6: list[str]
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
