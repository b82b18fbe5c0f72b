"""The DNS server's sockets: asyncio around the sans-I/O `Forwarder`.

Listens on UDP and TCP at each given address (the gateway's tunnel addresses), sends
queries upstream over UDP (one unconnected socket per family; answers are matched by the
forwarder, not trusted by source) or TCP (one connection per query), and answers clients.
Bounded: at most `MAX_TCP_CLIENTS` client connections, each closed after `TCP_IDLE` seconds
without a whole query; upstream TCP attempts end with the forwarder's timeout. Nothing here
parses DNS: bytes go to the forwarder and come back from it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import logging
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any

from gateway.dns.forwarder import (
    Client,
    Forwarder,
    Lookup,
    ToClient,
    ToUpstream,
    Transport,
)
from gateway.dns.resources import Event, ProxyMapping, ResourceAnswers
from gateway.endpoint import Endpoint

log = logging.getLogger(__name__)

MAX_TCP_CLIENTS = 128
TCP_IDLE = 10.0
MAX_MESSAGE = 65535
IP_FREEBIND = 15  # linux/in.h; the socket module has no name for it before Python 3.12

MappingHandler = Callable[[ProxyMapping], None]


def bound_socket(host: str, port: int, kind: socket.SocketKind) -> socket.socket:
    """A socket bound to (host, port) even before the address is usable: a tunnel's IPv6
    address is tentative for a moment after it was added (DAD), hence IP_FREEBIND."""
    family = socket.AF_INET if ipaddress.ip_address(host).version == 4 else socket.AF_INET6  # noqa: PLR2004 - IP version
    sock = socket.socket(family, kind)
    try:
        sock.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def normalize(endpoint: Endpoint) -> Endpoint:
    """The form a received datagram's source takes, so upstream answers match their key."""
    return str(ipaddress.ip_address(endpoint[0])), endpoint[1]


class _Listener(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer, index: int) -> None:
        self.server = server
        self.index = index

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        client = Client(Transport.UDP, str(addr[0]), int(addr[1]), listener=self.index)
        self.server.query(client, data)


class _Upstream(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer) -> None:
        self.server = server

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        source = (str(ipaddress.ip_address(addr[0])), int(addr[1]))
        self.server.dispatch(
            self.server.forwarder.handle_response(source, Transport.UDP, data, time.monotonic())
        )

    def error_received(self, exc: Exception) -> None:
        log.debug("upstream socket error: %s", exc)  # ICMP unreachable: the timeout answers


class DnsServer:
    def __init__(
        self,
        forwarder: Forwarder,
        listen: Sequence[Endpoint],
        resources: ResourceAnswers | None = None,
        on_mapping: MappingHandler | None = None,
    ) -> None:
        self.forwarder = forwarder
        self.listen = tuple(listen)
        self.resources = resources
        self.on_mapping = on_mapping
        self._listeners: list[asyncio.DatagramTransport] = []
        self._upstream: dict[int, asyncio.DatagramTransport] = {}
        self._tcp_servers: list[asyncio.Server] = []
        self._tcp_clients: dict[int, asyncio.StreamWriter] = {}
        self._next_connection = 1
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self.counters: dict[str, int] = {"tcp_clients_refused": 0, "upstream_send_errors": 0}

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for index, (host, port) in enumerate(self.listen):
            listener, _ = await loop.create_datagram_endpoint(
                functools.partial(_Listener, self, index),
                sock=bound_socket(host, port, socket.SOCK_DGRAM),
            )
            self._listeners.append(listener)
            self._tcp_servers.append(
                await asyncio.start_server(
                    self._tcp_client, sock=bound_socket(host, port, socket.SOCK_STREAM)
                )
            )
        for family, any_address in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):  # noqa: S104 - the upstream sockets send only to the configured upstreams
            if any(
                ipaddress.ip_address(h).version == (4 if family == socket.AF_INET else 6)
                for h, _ in self.forwarder.upstreams
            ):
                transport, _ = await loop.create_datagram_endpoint(
                    functools.partial(_Upstream, self), local_addr=(any_address, 0), family=family
                )
                self._upstream[family] = transport
        self._spawn(self._expiry())

    async def close(self) -> None:
        for server in self._tcp_servers:
            server.close()
        for writer in list(self._tcp_clients.values()):
            writer.close()
        for listener in self._listeners:
            listener.close()
        for transport in self._upstream.values():
            transport.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _spawn(self, coroutine: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---- queries and answers --------------------------------------------------------------

    def query(self, client: Client, wire: bytes) -> None:
        now = time.monotonic()
        if self.resources is not None:
            for event in self.resources.handle_query(client, wire, now):
                self.dispatch(event)
        else:
            self.dispatch(self.forwarder.handle_query(client, wire, now))

    def dispatch(self, output: Event | None) -> None:
        if output is None:
            return
        if isinstance(output, ProxyMapping):
            if self.on_mapping is not None:
                self.on_mapping(output)
            return
        if isinstance(output, ToUpstream):
            self._wake.set()  # a new deadline
            if output.transport is Transport.UDP:
                self._send_udp(output)
            else:
                self._spawn(self._ask_over_tcp(output))
            return
        self._answer(output)

    def _answer(self, answer: ToClient) -> None:
        client = answer.client
        if isinstance(client, Lookup):
            if self.resources is not None:
                for event in self.resources.handle_lookup(client, answer.wire, time.monotonic()):
                    self.dispatch(event)
            return
        if client.transport is Transport.UDP:
            self._listeners[client.listener].sendto(answer.wire, (client.address, client.port))
            return
        writer = self._tcp_clients.get(client.connection)
        if writer is not None and not writer.is_closing():
            writer.write(len(answer.wire).to_bytes(2, "big") + answer.wire)

    def _send_udp(self, output: ToUpstream) -> None:
        host, port = output.upstream
        family = socket.AF_INET if ipaddress.ip_address(host).version == 4 else socket.AF_INET6  # noqa: PLR2004 - IP version
        transport = self._upstream.get(family)
        if transport is None:
            self.counters["upstream_send_errors"] += 1
            return
        transport.sendto(output.wire, (host, port))

    async def _ask_over_tcp(self, output: ToUpstream) -> None:
        host, port = output.upstream
        try:
            async with asyncio.timeout(self.forwarder.timeout):
                reader, writer = await asyncio.open_connection(host, port)
                try:
                    writer.write(len(output.wire).to_bytes(2, "big") + output.wire)
                    await writer.drain()
                    size = int.from_bytes(await reader.readexactly(2), "big")
                    wire = await reader.readexactly(size)
                finally:
                    writer.close()
        except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
            log.debug("upstream %s:%d over TCP: %s", host, port, exc)
            return  # the forwarder's timeout answers the client
        self.dispatch(
            self.forwarder.handle_response(output.upstream, Transport.TCP, wire, time.monotonic())
        )

    async def _tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._tcp_clients) >= MAX_TCP_CLIENTS:
            self.counters["tcp_clients_refused"] += 1
            writer.close()
            return
        connection = self._next_connection
        self._next_connection += 1
        self._tcp_clients[connection] = writer
        peer = writer.get_extra_info("peername")
        listener = self._tcp_listener_index(writer)
        try:
            while True:
                async with asyncio.timeout(TCP_IDLE):
                    size = int.from_bytes(await reader.readexactly(2), "big")
                    wire = await reader.readexactly(size)
                client = Client(
                    Transport.TCP,
                    str(peer[0]),
                    int(peer[1]),
                    listener=listener,
                    connection=connection,
                )
                self.query(client, wire)
        except (OSError, TimeoutError, asyncio.IncompleteReadError):
            pass
        finally:
            del self._tcp_clients[connection]
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    def _tcp_listener_index(self, writer: asyncio.StreamWriter) -> int:
        local = writer.get_extra_info("sockname")
        for index, (host, port) in enumerate(self.listen):
            if ipaddress.ip_address(host) == ipaddress.ip_address(local[0]) and port == local[1]:
                return index
        return 0

    async def _expiry(self) -> None:
        """SERVFAIL for queries whose upstream is silent; sleeps while nothing is pending."""
        while True:
            self._wake.clear()  # before reading the deadline, so no new one is missed
            deadline = self.forwarder.next_deadline()
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            for answer in self.forwarder.expire(time.monotonic()):
                self._answer(answer)
