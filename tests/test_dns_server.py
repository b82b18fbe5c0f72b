"""The DNS server's sockets on loopback, with two small upstream servers of the test's own."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import ipaddress
import select
import socket
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import dns.flags
import dns.message
import dns.rcode
import dns.rrset
import pytest

from gateway.dataplane.mappings import (
    MappingPair,
    MappingSender,
    PeerAnnouncer,
    apply_message,
    receive_mappings,
)
from gateway.dns.forwarder import Forwarder
from gateway.dns.resources import ProxyMapping, ResourceAnswers
from gateway.dns.server import (
    MAX_TCP_PIPELINE,
    TCP_WRITE_LIMIT,
    UPSTREAM_POOL,
    UPSTREAM_ROTATE,
    DnsServer,
    PeerOf,
)
from gateway.keys import generate_private_key
from gateway.nat.handler import ProxyHandler
from gateway.resources.names import parse_name_pattern
from gateway.resources.resource import Resource, parse_resource_address
from gateway.wireguard.device import Device
from ippacket.build import udp_packet

ANSWERS = {
    "a.test.": "192.0.2.1",
    "b.test.": "192.0.2.2",
    "big.test.": "192.0.2.3",
    "huge.test.": "192.0.2.4",
}
HUGE_RDATA = list(  # about 20 KB: a TCP-only answer
    dns.rrset.from_text("huge.test.", 60, "IN", "TXT", *(f'"{"x" * 250}{i:03}"' for i in range(80)))
)


class FakeUpstream(asyncio.DatagramProtocol):
    """Answers A queries from ANSWERS after `delay`; `silent.test` never; `big.test` and
    `huge.test` with TC over UDP (the whole answer over TCP: `huge.test` 20 KB). Serves
    pipelined queries on a TCP connection; notes each UDP query's source port and counts TCP
    connections."""

    def __init__(self, delay: float, tag: str) -> None:
        self.delay = delay
        self.tag = tag
        self.transport: asyncio.DatagramTransport | None = None
        self.seen: list[str] = []
        self.udp_ports: list[int] = []
        self.tcp_connections = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a datagram endpoint's transport

    def answer(self, wire: bytes, *, over_tcp: bool) -> bytes | None:
        query = dns.message.from_wire(wire)
        owner = query.question[0].name  # in the case the gateway randomised (0x20)
        name = str(owner).lower()
        self.seen.append(name)
        if name == "silent.test.":
            return None
        response = dns.message.make_response(query)
        if name in ("big.test.", "huge.test.") and not over_tcp:
            response.flags |= dns.flags.TC
        elif name == "huge.test.":
            response.answer.append(dns.rrset.from_rdata_list(owner, 60, HUGE_RDATA))
        else:
            response.answer.append(dns.rrset.from_text(owner, 60, "IN", "A", ANSWERS[name]))
            response.answer.append(dns.rrset.from_text(owner, 60, "IN", "TXT", f'"{self.tag}"'))
        return response.to_wire(max_size=65535)

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.udp_ports.append(int(addr[1]))
        reply = self.answer(data, over_tcp=False)
        if reply is not None and self.transport is not None:
            transport = self.transport
            asyncio.get_running_loop().call_later(self.delay, transport.sendto, reply, addr)

    async def tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.tcp_connections += 1
        with contextlib.suppress(asyncio.IncompleteReadError, OSError):
            while True:
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
    upstreams: list[tuple[str, int]],
    timeout: float = 5.0,
    peer_of: PeerOf | None = None,
) -> AsyncIterator[tuple[tuple[str, int], DnsServer]]:
    listen = ("127.0.0.1", free_port())
    server = DnsServer(
        Forwarder(upstreams, timeout=timeout), [listen], device="lo", peer_of=peer_of
    )
    await server.start()
    try:
        yield listen, server
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
            gateway_dns([up1, up2]) as (listen, _),
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
        async with upstream(0.0, "up") as (up, fake), gateway_dns([up]) as (listen, _):
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
        async with upstream(0.0, "up") as (up, _), gateway_dns([up], timeout=0.5) as (listen, _):
            with udp_client() as sock:
                answer = await ask_udp(sock, listen, query("silent.test", 9))
            assert (answer.id, answer.rcode()) == (9, dns.rcode.SERVFAIL)

    asyncio.run(scenario())


def test_garbage_gets_formerr_or_nothing_and_the_server_keeps_serving() -> None:
    async def scenario() -> None:
        async with upstream(0.0, "up") as (up, _), gateway_dns([up]) as (listen, _):
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


class CryptoSide:
    """The crypto process's end of the mappings socket, in a thread: a real ProxyHandler
    applies what comes and acknowledges it; `restart()` swaps in an empty handler and says
    so, as a new crypto process does."""

    def __init__(self, pair: MappingPair) -> None:
        self.pair = pair
        self.handler = proxy_handler()
        self.announcer = PeerAnnouncer(pair.crypto, Device(generate_private_key()))
        self._restart = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def __enter__(self) -> CryptoSide:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def restart(self) -> None:
        self._restart.set()
        while self._restart.is_set():
            time.sleep(0.01)

    def mapped(self, mapping: ProxyMapping) -> bool:
        packet = udp_packet(ipaddress.IPv4Address("127.0.0.1"), mapping.proxies.v4, 1, 53)
        return self.handler.from_peer(PEER, packet, now=0.0) is not None

    def _run(self) -> None:
        while not self._stop.is_set():
            if self._restart.is_set():
                self.handler = proxy_handler()
                self.announcer.started()
                self._restart.clear()
            select.select([self.pair.crypto], [], [], 0.02)
            receive_mappings(self.pair.crypto, functools.partial(apply_message, self.handler))


PEER = b"P" * 32


def proxy_handler() -> ProxyHandler:
    resources = [Resource("a", parse_resource_address("a.test"))]
    return ProxyHandler(resources, {PEER: frozenset({0})}, lambda _packet: None)


def test_dns_resource_answered_after_its_mapping_is_applied_and_again_after_a_crypto_restart() -> (
    None
):
    """Issue 19: after the crypto process restarted, an answer from the DNS cache handed out a
    proxy address the new process had no mapping for."""

    async def scenario() -> None:
        async with upstream(0.0, "up") as (up, fake):
            listen = ("127.0.0.1", free_port())
            forwarder = Forwarder([up])
            resources = ResourceAnswers(
                [(0, parse_name_pattern("a.test"))], {PEER: [0]}, {"127.0.0.1": PEER}.get, forwarder
            )
            pair = MappingPair.create()
            sender = MappingSender(pair.dns)
            sender.on_started = lambda: [sender.send(m) for m in resources.live_mappings()] and None
            sender.attach(asyncio.get_running_loop())
            server = DnsServer(forwarder, [listen], resources, sender)
            await server.start()
            try:
                with CryptoSide(pair) as crypto, udp_client() as sock:
                    answer = await ask_udp(sock, listen, query("a.test", 11))
                    (mapping,) = resources.live_mappings()
                    assert crypto.mapped(mapping)  # before the answer left
                    other = await ask_udp(sock, listen, query("b.test", 12))
                    crypto.restart()
                    assert not crypto.mapped(mapping)
                    cached = await ask_udp(sock, listen, query("a.test", 13))
                    assert crypto.mapped(mapping)  # sent again before the cached answer
                    assert a_records(cached) == a_records(answer)
            finally:
                sender.detach()
                await server.close()
                pair.close()
        assert mapping.real_v4 == (ipaddress.IPv4Address("192.0.2.1"),)
        assert a_records(answer) == [str(mapping.proxies.v4)]
        assert a_records(other) == ["192.0.2.2"]  # not a resource: forwarded
        assert sorted(fake.seen) == ["a.test.", "a.test.", "b.test."]  # A and AAAA lookups
        assert sender.unacknowledged == 0

    asyncio.run(scenario())


def test_only_peers_are_answered_through_the_device_the_sockets_are_bound_to() -> None:
    """Issue 19: the server answered any host that routed to a tunnel address."""

    async def scenario() -> None:
        async with upstream(0.0, "up") as (up, _):
            listen = ("127.0.0.1", free_port())
            server = DnsServer(Forwarder([up]), [listen], device="lo", peer_of={}.get)
            await server.start()
            try:
                with udp_client() as sock, pytest.raises(TimeoutError):
                    await asyncio.wait_for(ask_udp(sock, listen, query("a.test", 1)), 0.5)
                reader, writer = await asyncio.open_connection(*listen)
                writer.write(len(query("a.test", 2)).to_bytes(2, "big") + query("a.test", 2))
                with contextlib.suppress(ConnectionResetError):  # closed, unanswered
                    assert await asyncio.wait_for(reader.read(), 5) == b""
                writer.close()
                assert server.forwarder.counters["dropped_not_peer"] == 2
                assert server.forwarder.counters["queries"] == 0
                for transport in (*server._listeners, *server._tcp_servers):
                    sockets = getattr(transport, "sockets", None) or [
                        transport.get_extra_info("socket")
                    ]
                    for sock in sockets:
                        bound = sock.getsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, 16)
                        assert bound.rstrip(b"\0") == b"lo"
            finally:
                await server.close()

    asyncio.run(scenario())


def test_a_small_udp_query_never_buys_a_large_answer() -> None:
    """Issue 19: a 29-byte TXT query returned 52,629 bytes over UDP (a reflection amplifier)."""

    async def scenario() -> None:
        async with upstream(0.0, "up") as (up, _), gateway_dns([up]) as (listen, _):
            with udp_client() as sock:
                wire = query("huge.test", 3)
                data_future = ask_udp_raw(sock, listen, wire)
                data = await data_future
            reply = dns.message.from_wire(data)
            assert len(wire) < 40 and len(data) <= 512
            assert reply.flags & dns.flags.TC and reply.id == 3

    asyncio.run(scenario())


async def ask_udp_raw(sock: socket.socket, server: tuple[str, int], wire: bytes) -> bytes:
    loop = asyncio.get_running_loop()
    await loop.sock_sendto(sock, wire, server)
    return await asyncio.wait_for(loop.sock_recv(sock, 65535), 10)


def test_upstream_udp_queries_leave_from_random_ports_that_keep_changing() -> None:
    """Issue 19: one source port for the process's life left only the 16-bit id to guess."""

    async def scenario() -> None:
        async with upstream(0.0, "up") as (up, fake), gateway_dns([up]) as (listen, _):
            with udp_client() as sock:
                for ident in range(200):
                    assert a_records(await ask_udp(sock, listen, query("a.test", ident)))
            # A pool of random ports, renewed as it is used: each port carries few queries.
            ports = collections.Counter(fake.udp_ports)
            assert len(ports) >= 200 // UPSTREAM_ROTATE + UPSTREAM_POOL // 2
            assert max(ports.values()) <= UPSTREAM_ROTATE

    asyncio.run(scenario())


SENT = 200


def test_a_tcp_client_that_never_reads_is_not_read_and_upstream_connections_are_reused() -> None:
    """Issue 19: a client pipelining queries for a large answer and never reading grew the
    DNS process from 26 to 163 MiB; each query opened its own upstream connection."""

    async def scenario() -> None:
        async with upstream(0.0, "up") as (up, fake), gateway_dns([up]) as (listen, server):
            # A small receive window, so the kernel's buffers do not hide the server's own.
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(listen)
            reader, writer = await asyncio.open_connection(sock=sock)
            writer.transport.set_write_buffer_limits(high=1 << 24)
            for ident in range(SENT):
                wire = query("huge.test", ident)
                writer.write(len(wire).to_bytes(2, "big") + wire)
            await asyncio.sleep(1.0)
            asked = fake.seen.count("huge.test.")
            await asyncio.sleep(0.5)
            assert fake.seen.count("huge.test.") == asked  # not read any more
            # Answers (20 KB each) fill the kernel's buffers, then a few wait in the server's
            # memory, then the client is not read any more.
            assert asked <= SENT // 2, asked
            waiting = [c.writer.transport.get_write_buffer_size() for c in server.tcp_clients()]
            assert waiting and max(waiting) <= TCP_WRITE_LIMIT + MAX_TCP_PIPELINE * 21_000
            assert fake.tcp_connections == 1
            # It reads: more queries are read and asked, on the same upstream connection.
            for _ in range(asked + 10):
                size = int.from_bytes(await asyncio.wait_for(reader.readexactly(2), 10), "big")
                await reader.readexactly(size)
            writer.close()
            assert fake.seen.count("huge.test.") > asked
            assert fake.tcp_connections == 1

    asyncio.run(scenario())
