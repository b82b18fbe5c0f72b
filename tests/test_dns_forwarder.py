"""The sans-I/O DNS forwarder: answers never mixed up, bounded, every bad input counted."""

from __future__ import annotations

import random

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.dns.forwarder import Client, Forwarder, Lookup, ToClient, ToUpstream, Transport

UP1, UP2 = ("10.98.0.2", 53), ("10.98.0.3", 53)
ALICE = Client(Transport.UDP, "100.64.0.2", 40000)
ALICE_OTHER_SOCKET = Client(Transport.UDP, "100.64.0.2", 40001)
BOB = Client(Transport.UDP, "100.64.0.3", 40000)


def query(name: str, ident: int, rdtype: str = "A") -> bytes:
    message = dns.message.make_query(name, rdtype)
    message.id = ident
    return message.to_wire()


def answer(sent: bytes, address: str, *, truncated: bool = False) -> bytes:
    """What an upstream answers to `sent` (keeping its id)."""
    request = dns.message.from_wire(sent)
    response = dns.message.make_response(request)
    question = request.question[0]
    response.answer.append(dns.rrset.from_text(question.name, 60, "IN", "A", address))
    if truncated:
        response.flags |= dns.flags.TC
    return response.to_wire()


def forwarded(output: object) -> ToUpstream:
    assert isinstance(output, ToUpstream), output
    return output


def to_client(output: object) -> ToClient:
    assert isinstance(output, ToClient), output
    return output


def addresses(wire: bytes) -> list[str]:
    return [item.to_text() for rrset in dns.message.from_wire(wire).answer for item in rrset]


def test_same_id_from_two_sockets_answered_in_opposite_order() -> None:
    """The seed's bug: two clients with one query id, two upstreams answering out of order."""
    fwd = Forwarder([UP1, UP2], rng=random.Random(1))
    first = forwarded(fwd.handle_query(ALICE, query("a.example", 7), 0.0))
    second = forwarded(fwd.handle_query(ALICE_OTHER_SOCKET, query("b.example", 7), 0.0))
    assert {first.upstream, second.upstream} == {UP1, UP2}
    late = to_client(
        fwd.handle_response(second.upstream, Transport.UDP, answer(second.wire, "192.0.2.2"), 0.1)
    )
    early = to_client(
        fwd.handle_response(first.upstream, Transport.UDP, answer(first.wire, "192.0.2.1"), 0.2)
    )
    assert (late.client, addresses(late.wire)) == (ALICE_OTHER_SOCKET, ["192.0.2.2"])
    assert (early.client, addresses(early.wire)) == (ALICE, ["192.0.2.1"])
    assert dns.message.from_wire(late.wire).id == 7 == dns.message.from_wire(early.wire).id
    assert fwd.in_flight == 0


def test_same_id_same_upstream_two_clients() -> None:
    fwd = Forwarder([UP1], rng=random.Random(2))
    a = forwarded(fwd.handle_query(ALICE, query("x.example", 1), 0.0))
    b = forwarded(fwd.handle_query(BOB, query("x.example", 1), 0.0))
    assert a.wire[:2] != b.wire[:2]  # the gateway's ids differ
    got_b = to_client(fwd.handle_response(UP1, Transport.UDP, answer(b.wire, "192.0.2.9"), 0.1))
    got_a = to_client(fwd.handle_response(UP1, Transport.UDP, answer(a.wire, "192.0.2.8"), 0.1))
    assert (got_a.client, addresses(got_a.wire)) == (ALICE, ["192.0.2.8"])
    assert (got_b.client, addresses(got_b.wire)) == (BOB, ["192.0.2.9"])


def test_ids_sent_upstream_are_random_not_the_clients() -> None:
    fwd = Forwarder([UP1], max_per_client=200)
    ids = {
        forwarded(fwd.handle_query(ALICE, query("a.example", 5), 0.0)).wire[:2] for _ in range(200)
    }
    assert len(ids) == 200  # 200 distinct ids while all are pending, none reused


def test_unmatched_and_spoofed_answers_are_dropped_and_counted() -> None:
    fwd = Forwarder([UP1], rng=random.Random(3))
    sent = forwarded(fwd.handle_query(ALICE, query("a.example", 9), 0.0))
    # Right id, wrong server; wrong id; wrong question; not a response; garbage.
    assert fwd.handle_response(UP2, Transport.UDP, answer(sent.wire, "192.0.2.1"), 0.1) is None
    other_id = bytes([sent.wire[0] ^ 0xFF, sent.wire[1]]) + sent.wire[2:]
    assert fwd.handle_response(UP1, Transport.UDP, answer(other_id, "192.0.2.1"), 0.1) is None
    wrong_q = dns.message.from_wire(query("evil.example", 0))
    wrong_q.id = int.from_bytes(sent.wire[:2], "big")
    assert (
        fwd.handle_response(UP1, Transport.UDP, answer(wrong_q.to_wire(), "192.0.2.1"), 0.1) is None
    )
    assert fwd.handle_response(UP1, Transport.UDP, sent.wire, 0.1) is None
    assert fwd.handle_response(UP1, Transport.UDP, sent.wire[:2] + b"\x81\x80junk", 0.1) is None
    assert fwd.counters["unmatched_responses"] == 5
    # The real answer still arrives afterwards.
    real = to_client(fwd.handle_response(UP1, Transport.UDP, answer(sent.wire, "192.0.2.7"), 0.2))
    assert addresses(real.wire) == ["192.0.2.7"]
    # And a second copy of it matches nothing any more.
    assert fwd.handle_response(UP1, Transport.UDP, answer(sent.wire, "192.0.2.7"), 0.3) is None


def test_timeout_gives_servfail_after_five_seconds() -> None:
    fwd = Forwarder([UP1], rng=random.Random(4))
    fwd.handle_query(ALICE, query("slow.example", 33), 10.0)
    assert fwd.next_deadline() == 15.0
    assert fwd.expire(14.9) == []
    (failed,) = fwd.expire(15.0)
    reply = dns.message.from_wire(failed.wire)
    assert (failed.client, reply.id, reply.rcode()) == (ALICE, 33, dns.rcode.SERVFAIL)
    assert str(reply.question[0].name) == "slow.example."
    assert fwd.in_flight == 0
    assert fwd.next_deadline() is None
    assert fwd.counters["servfail_timeout"] == 1


def test_at_most_max_in_flight_then_servfail() -> None:
    fwd = Forwarder([UP1], max_in_flight=1000, lookup_reserve=0, max_per_client=1000)
    for i in range(1000):
        forwarded(fwd.handle_query(ALICE, query(f"n{i}.example", i), 0.0))
    refused = to_client(fwd.handle_query(BOB, query("one.more.example", 4242), 0.0))
    reply = dns.message.from_wire(refused.wire)
    assert (reply.id, reply.rcode()) == (4242, dns.rcode.SERVFAIL)
    assert fwd.in_flight == 1000
    assert fwd.counters["servfail_overload"] == 1


def test_one_client_cannot_take_the_others_slots_nor_the_lookups_reserve() -> None:
    """Issue 19: 2,000 unanswered queries from A made B's query SERVFAIL at once."""
    fwd = Forwarder([UP1], rng=random.Random(8))  # the defaults: 1000 slots, 200 reserved
    refused = 0
    for i in range(2000):
        out = fwd.handle_query(ALICE, query(f"n{i}.silent.example", i % 65536), 0.0)
        refused += isinstance(out, ToClient)
    assert fwd.in_flight_for(ALICE.owner) == fwd.max_per_client
    assert refused == 2000 - fwd.max_per_client
    assert fwd.counters["servfail_client_quota"] == refused
    forwarded(fwd.handle_query(BOB, query("ordinary.example", 1), 0.0))
    # Many clients fill the slots clients may use; the gateway's own lookups still go out.
    for peer in range(20):
        client = Client(Transport.UDP, f"100.64.1.{peer}", 5000, peer=f"peer{peer}")
        for i in range(fwd.max_per_client):
            fwd.handle_query(client, query(f"n{i}.p{peer}.example", i), 0.0)
    assert fwd.in_flight == fwd.max_in_flight - fwd.lookup_reserve
    forwarded(fwd.lookup(1, dns.name.from_text("app.corp.test"), dns.rdatatype.A, 0.0))
    # Answers and timeouts give the slots back.
    fwd.expire(100.0)
    assert fwd.in_flight == 0
    assert fwd.in_flight_for(ALICE.owner) == 0
    forwarded(fwd.handle_query(ALICE, query("again.example", 2), 100.0))


def test_the_quota_follows_the_peer_not_the_address() -> None:
    fwd = Forwarder([UP1], max_per_client=2)
    for i in range(2):
        client = Client(Transport.UDP, f"100.64.0.{i + 10}", 5000, peer="alice")
        forwarded(fwd.handle_query(client, query(f"n{i}.example", i), 0.0))
    third = Client(Transport.UDP, "100.64.0.99", 5000, peer="alice")
    assert isinstance(fwd.handle_query(third, query("n3.example", 3), 0.0), ToClient)


def test_the_name_sent_upstream_has_random_case_and_the_answer_must_echo_it() -> None:
    fwd = Forwarder([UP1], rng=random.Random(9))
    name = "www.some-long-name.example"
    sent = forwarded(fwd.handle_query(ALICE, query(name, 12), 0.0))
    sent_name = str(dns.message.from_wire(sent.wire).question[0].name)
    assert sent_name.lower() == name + "." and sent_name != name + "."
    # An off-path forger who got the id right but not the case: dropped, still pending.
    forged = dns.message.from_wire(answer(sent.wire, "203.0.113.66"))
    forged.question[0].name = dns.name.from_text(name)
    forged.answer[0].name = dns.name.from_text(name)
    assert fwd.handle_response(UP1, Transport.UDP, forged.to_wire(), 0.1) is None
    assert fwd.counters["unmatched_responses"] == 1
    real = to_client(fwd.handle_response(UP1, Transport.UDP, answer(sent.wire, "192.0.2.1"), 0.1))
    reply = dns.message.from_wire(real.wire)
    assert str(reply.question[0].name) == name + "."  # the client's own spelling back
    assert addresses(real.wire) == ["192.0.2.1"]


def test_large_answers_reach_udp_clients_truncated_to_their_edns_size() -> None:
    """Issue 19: a 29-byte query bought a 52 KB answer (the TCP retry's, sent over UDP)."""
    for edns_size, limit in ((None, 512), (1232, 1232)):
        fwd = Forwarder([UP1], rng=random.Random(10))
        request = dns.message.make_query("big.example", "TXT")
        if edns_size is not None:
            request.use_edns(0, payload=edns_size)
        sent = forwarded(fwd.handle_query(ALICE, request.to_wire(), 0.0))
        big = dns.message.make_response(dns.message.from_wire(sent.wire))
        big.answer.append(
            dns.rrset.from_text(
                big.question[0].name, 60, "IN", "TXT", *(f'"{"x" * 200}{i}"' for i in range(50))
            )
        )
        wire = big.to_wire(max_size=65535)
        assert len(wire) > 10_000
        out = to_client(fwd.handle_response(UP1, Transport.UDP, wire, 0.1))
        assert len(out.wire) <= limit
        reply = dns.message.from_wire(out.wire)
        assert reply.flags & dns.flags.TC
        assert reply.id == request.id and not reply.answer
        assert str(reply.question[0].name) == "big.example."
    # Over TCP the whole answer goes.
    fwd = Forwarder([UP1], rng=random.Random(11))
    tcp = Client(Transport.TCP, "100.64.0.2", 50000, connection=1)
    sent = forwarded(
        fwd.handle_query(tcp, dns.message.make_query("big.example", "TXT").to_wire(), 0.0)
    )
    big = dns.message.make_response(dns.message.from_wire(sent.wire))
    big.answer.append(
        dns.rrset.from_text(
            big.question[0].name, 60, "IN", "TXT", *(f'"{"x" * 200}{i}"' for i in range(5))
        )
    )
    assert len(to_client(fwd.handle_response(UP1, Transport.TCP, big.to_wire(), 0.1)).wire) > 512


def test_a_query_with_many_questions_is_refused_from_its_header() -> None:
    fwd = Forwarder([UP1])
    header = b"\x12\x34\x01\x00\x00\x05\x00\x00\x00\x00\x00\x00"
    reply = to_client(fwd.handle_query(ALICE, header + b"\x01a\x00\x00\x01\x00\x01" * 5, 0.0))
    assert reply.wire[:2] == b"\x12\x34" and reply.wire[3] & 0xF == dns.rcode.FORMERR
    assert len(reply.wire) == 12  # no question echoed: nothing was parsed


def test_truncated_answer_is_retried_over_tcp() -> None:
    fwd = Forwarder([UP1], rng=random.Random(5))
    sent = forwarded(fwd.handle_query(ALICE, query("big.example", 77), 0.0))
    retry = forwarded(
        fwd.handle_response(UP1, Transport.UDP, answer(sent.wire, "192.0.2.1", truncated=True), 1.0)
    )
    assert (retry.upstream, retry.transport) == (UP1, Transport.TCP)
    assert fwd.next_deadline() == 6.0  # a fresh timeout for the TCP attempt
    full = to_client(fwd.handle_response(UP1, Transport.TCP, answer(retry.wire, "192.0.2.1"), 1.5))
    assert (full.client, dns.message.from_wire(full.wire).id) == (ALICE, 77)
    assert fwd.expire(100.0) == []


def test_tcp_queries_go_upstream_over_tcp() -> None:
    fwd = Forwarder([UP1])
    client = Client(Transport.TCP, "100.64.0.2", 50000, connection=3)
    sent = forwarded(fwd.handle_query(client, query("a.example", 1), 0.0))
    assert sent.transport is Transport.TCP
    # A UDP answer with the TCP query's id is not its answer.
    assert fwd.handle_response(UP1, Transport.UDP, answer(sent.wire, "192.0.2.1"), 0.1) is None
    assert (
        to_client(
            fwd.handle_response(UP1, Transport.TCP, answer(sent.wire, "192.0.2.1"), 0.1)
        ).client
        == client
    )


def test_malformed_queries_get_formerr_or_are_dropped() -> None:
    fwd = Forwarder([UP1])
    assert fwd.handle_query(ALICE, b"\x00\x01short", 0.0) is None
    bad = to_client(
        fwd.handle_query(ALICE, b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xff", 0.0)
    )
    reply = dns.message.from_wire(bad.wire)
    assert (reply.id, reply.rcode()) == (0x1234, dns.rcode.FORMERR)
    two = dns.message.make_query("a.example", "A")
    two.question.append(dns.message.make_query("b.example", "A").question[0])
    assert (
        dns.message.from_wire(to_client(fwd.handle_query(ALICE, two.to_wire(), 0.0)).wire).rcode()
        == dns.rcode.FORMERR
    )
    notify = dns.message.make_query("a.example", "SOA")
    notify.set_opcode(dns.opcode.NOTIFY)
    assert (
        dns.message.from_wire(
            to_client(fwd.handle_query(ALICE, notify.to_wire(), 0.0)).wire
        ).rcode()
        == dns.rcode.NOTIMP
    )
    response = dns.message.make_response(dns.message.make_query("a.example", "A")).to_wire()
    assert fwd.handle_query(ALICE, response, 0.0) is None
    assert fwd.in_flight == 0
    assert fwd.counters["dropped_malformed"] == 2
    assert fwd.counters["formerr"] == 2


def test_no_upstream_is_servfail() -> None:
    reply = to_client(Forwarder([]).handle_query(ALICE, query("a.example", 3), 0.0))
    assert dns.message.from_wire(reply.wire).rcode() == dns.rcode.SERVFAIL


@settings(max_examples=300)
@given(st.binary(max_size=600), st.binary(max_size=600))
def test_fuzz_never_raises(query_bytes: bytes, response_bytes: bytes) -> None:
    fwd = Forwarder([UP1], rng=random.Random(6))
    fwd.handle_query(ALICE, query_bytes, 0.0)
    sent = fwd.handle_query(ALICE, query("a.example", 1), 0.0)
    assert isinstance(sent, ToUpstream)
    fwd.handle_response(UP1, Transport.UDP, response_bytes, 0.1)
    fwd.handle_response(UP1, Transport.UDP, sent.wire[:2] + response_bytes, 0.1)
    fwd.expire(100.0)
    assert fwd.in_flight == 0


def test_lookups_for_the_gateway_itself_come_back_tagged() -> None:
    fwd = Forwarder([UP1], rng=random.Random(7))
    sent = forwarded(fwd.lookup(42, dns.name.from_text("app.corp.test"), dns.rdatatype.AAAA, 0.0))
    back = to_client(fwd.handle_response(UP1, Transport.UDP, answer(sent.wire, "192.0.2.1"), 0.1))
    assert back.client == Lookup(42)
    failed = to_client(Forwarder([]).lookup(5, dns.name.from_text("x.test"), dns.rdatatype.A, 0.0))
    assert failed.client == Lookup(5)
    assert dns.message.from_wire(failed.wire).rcode() == dns.rcode.SERVFAIL
    fwd.lookup(43, dns.name.from_text("slow.test"), dns.rdatatype.A, 0.0)
    (timed_out,) = fwd.expire(10.0)
    assert timed_out.client == Lookup(43)
