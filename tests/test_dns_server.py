"""The DNS server's sockets on loopback, with two small upstream servers of the test's own."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import dns.flags
import dns.message
import dns.rcode
import dns.rrset

from gateway.dns.forwarder import Forwarder
from gateway.dns.resources import ProxyMapping, ResourceAnswers
from gateway.dns.server import DnsServer
from gateway.resources.names import parse_name_pattern

ANSWERS = {"a.test.": "192.0.2.1", "b.test.": "192.0.2.2", "big.test.": "192.0.2.3"}


class FakeUpstream(asyncio.DatagramProtocol):
    """Answers A queries from ANSWERS after `delay`; `silent.test` never; `big.test` with TC
    over UDP (the whole answer over TCP)."""

    def __init__(self, delay: float, tag: str) -> None:
        self.delay = delay
        self.tag = tag
        self.transport: asyncio.DatagramTransport | None = None
        self.seen: list[str] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a datagram endpoint's transport

    def answer(self, wire: bytes, *, over_tcp: bool) -> bytes | None:
        query = dns.message.from_wire(wire)
        name = str(query.question[0].name)
        self.seen.append(name)
        if name == "silent.test.":
            return None
        response = dns.message.make_response(query)
        if name == "big.test." and not over_tcp:
            response.flags |= dns.flags.TC
        else:
            response.answer.append(dns.rrset.from_text(name, 60, "IN", "A", ANSWERS[name]))
            response.answer.append(dns.rrset.from_text(name, 60, "IN", "TXT", f'"{self.tag}"'))
        return response.to_wire()

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        reply = self.answer(data, over_tcp=False)
        if reply is not None and self.transport is not None:
            transport = self.transport
            asyncio.get_running_loop().call_later(self.delay, transport.sendto, reply, addr)

    async def tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        size = int.from_bytes(await reader.readexactly(2), "big")
        reply = self.answer(await reader.readexactly(size), over_tcp=True)
        if reply is not None:
            writer.write(len(reply).to_bytes(2, "big") + reply)
            await writer.drain()
        writer.close()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", 0))
        port: int = udp.getsockname()[1]
    return port


@asynccontextmanager
async def upstream(delay: float, tag: str) -> AsyncIterator[tuple[tuple[str, int], FakeUpstream]]:
    loop = asyncio.get_running_loop()
    fake = FakeUpstream(delay, tag)
    transport, _ = await loop.create_datagram_endpoint(lambda: fake, local_addr=("127.0.0.1", 0))
    port = transport.get_extra_info("sockname")[1]
    server = await asyncio.start_server(fake.tcp, "127.0.0.1", port)
    try:
        yield ("127.0.0.1", port), fake
    finally:
        transport.close()
        server.close()


@asynccontextmanager
async def gateway_dns(
    upstreams: list[tuple[str, int]], timeout: float = 5.0
) -> AsyncIterator[tuple[str, int]]:
    listen = ("127.0.0.1", free_port())
    server = DnsServer(Forwarder(upstreams, timeout=timeout), [listen])
    await server.start()
    try:
        yield listen
    finally:
        await server.close()


async def ask_udp(sock: socket.socket, server: tuple[str, int], wire: bytes) -> dns.message.Message:
    loop = asyncio.get_running_loop()
    await loop.sock_sendto(sock, wire, server)
    data = await asyncio.wait_for(loop.sock_recv(sock, 65535), 10)
    return dns.message.from_wire(data)


def udp_client() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    sock.bind(("127.0.0.1", 0))
    return sock


def query(name: str, ident: int) -> bytes:
    message = dns.message.make_query(name, "A")
    message.id = ident
    return message.to_wire()


def a_records(message: dns.message.Message) -> list[str]:
    return [r.to_text() for rrset in message.answer if rrset.rdtype == 1 for r in rrset]


def test_same_id_two_sockets_two_upstreams_answering_in_opposite_order() -> None:
    async def scenario() -> None:
        async with (
            upstream(0.4, "slow") as (up1, _),
            upstream(0.0, "fast") as (up2, _),
            gateway_dns([up1, up2]) as listen,
        ):
            first, second = udp_client(), udp_client()
            with first, second:
                # Same id; the first goes to the slow upstream, the second to the fast one.
                a_task = asyncio.create_task(ask_udp(first, listen, query("a.test", 4242)))
                await asyncio.sleep(0.05)
                b = await ask_udp(second, listen, query("b.test", 4242))
                assert not a_task.done()  # the answers really come in the opposite order
                a = await a_task
        assert (a.id, a_records(a)) == (4242, ["192.0.2.1"])
        assert (b.id, a_records(b)) == (4242, ["192.0.2.2"])

    asyncio.run(scenario())


def test_tcp_queries_and_truncated_answers_go_over_tcp() -> None:
    async def scenario() -> None:
        async with upstream(0.0, "up") as (up, fake), gateway_dns([up]) as listen:
            reader, writer = await asyncio.open_connection(*listen)
            wire = query("a.test", 7)
            writer.write(len(wire).to_bytes(2, "big") + wire)
            size = int.from_bytes(await asyncio.wait_for(reader.readexactly(2), 10), "big")
            answer = dns.message.from_wire(await reader.readexactly(size))
            writer.close()
            assert (answer.id, a_records(answer)) == (7, ["192.0.2.1"])
            with udp_client() as sock:
                big = await ask_udp(sock, listen, query("big.test", 8))
            assert not big.flags & dns.flags.TC
            assert a_records(big) == ["192.0.2.3"]
            assert fake.seen.count("big.test.") == 2  # once over UDP, once over TCP

    asyncio.run(scenario())


def test_silent_upstream_gives_servfail_after_the_timeout() -> None:
    async def scenario() -> None:
        async with upstream(0.0, "up") as (up, _), gateway_dns([up], timeout=0.5) as listen:
            with udp_client() as sock:
                answer = await ask_udp(sock, listen, query("silent.test", 9))
            assert (answer.id, answer.rcode()) == (9, dns.rcode.SERVFAIL)

    asyncio.run(scenario())


def test_garbage_gets_formerr_or_nothing_and_the_server_keeps_serving() -> None:
    async def scenario() -> None:
        async with upstream(0.0, "up") as (up, _), gateway_dns([up]) as listen:
            loop = asyncio.get_running_loop()
            with udp_client() as sock:
                await loop.sock_sendto(sock, b"\x00", listen)
                formerr = await ask_udp(
                    sock, listen, b"\xab\xcd\x01\x00\x00\x01" + b"\x00" * 6 + b"\xff"
                )
                assert (formerr.id, formerr.rcode()) == (0xABCD, dns.rcode.FORMERR)
                # A TCP client that sends half a message and stalls does not stop others.
                _, stalled = await asyncio.open_connection(*listen)
                stalled.write(b"\x00\x40\x01")
                ok = await ask_udp(sock, listen, query("a.test", 10))
                assert a_records(ok) == ["192.0.2.1"]
                stalled.close()

    asyncio.run(scenario())


def test_dns_resource_answered_with_a_proxy_after_the_mapping_is_out() -> None:
    async def scenario() -> None:
        mappings: list[ProxyMapping] = []
        async with upstream(0.0, "up") as (up, fake):
            listen = ("127.0.0.1", free_port())
            forwarder = Forwarder([up])
            resources = ResourceAnswers(
                [(0, parse_name_pattern("a.test"))], {"me": [0]}, {"127.0.0.1": "me"}.get, forwarder
            )
            server = DnsServer(forwarder, [listen], resources, mappings.append)
            await server.start()
            try:
                with udp_client() as sock:
                    answer = await ask_udp(sock, listen, query("a.test", 11))
                    other = await ask_udp(sock, listen, query("b.test", 12))
            finally:
                await server.close()
        (mapping,) = mappings
        assert mapping.real_v4 == (ipaddress.IPv4Address("192.0.2.1"),)
        assert a_records(answer) == [str(mapping.proxies.v4)]
        assert a_records(other) == ["192.0.2.2"]  # not a resource: forwarded
        assert sorted(fake.seen) == ["a.test.", "a.test.", "b.test."]  # A and AAAA lookups

    asyncio.run(scenario())
