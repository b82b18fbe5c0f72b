"""The DNS server's sockets: asyncio around the sans-I/O `Forwarder` and `ResourceAnswers`.

Listens on UDP and TCP at each given address (the gateway's tunnel addresses). Only peers
are answered: the sockets are bound to the TUN device (SO_BINDTODEVICE), so a LAN host that
routes to a tunnel address reaches nothing, and a query whose source no peer owns
(`peer_of`) is dropped and counted. The peer is the client's quota owner.

Upstream: UDP queries leave from a pool of sockets on random ports that is renewed as it
is used (`_UpstreamUdp`; with the forwarder's random id and 0x20 case, an off-path forger
has to guess all three). TCP queries share one
pipelined connection per upstream (RFC 7766), opened when needed, closed when idle; what a
closing upstream left unanswered is asked again on a new connection.

Bounded: at most `MAX_TCP_CLIENTS` client connections, each closed after `TCP_IDLE` seconds
without a whole query; a client connection reads no further query while `MAX_TCP_PIPELINE`
of its queries are unanswered or more than `TCP_WRITE_LIMIT` bytes of answers wait for it to
read (closed when that does not drain within TCP_IDLE); the kernel's send buffer for it is
fixed at TCP_WRITE_LIMIT too. Resource answers wait until the
mappings sent before them are applied (`MappingSink.when_applied`), in order of arrival.
Nothing here parses DNS: bytes go to the forwarder and come back from it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import logging
import resource
import secrets
import socket
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Any, Protocol

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
from gateway.udp_io import SO_RCVBUFFORCE, set_socket_buffer

log = logging.getLogger(__name__)

MAX_TCP_CLIENTS = 128
TCP_IDLE = 10.0
MAX_MESSAGE = 65535
MAX_TCP_PIPELINE = 16  # unanswered queries of one client connection before it is not read
TCP_WRITE_LIMIT = 64 * 1024  # answers waiting for a client before it is not read
MAX_UPSTREAM_TCP_QUEUE = 1000  # queries on one upstream connection not answered yet
UPSTREAM_TCP_RETRIES = 2  # new connections for queries a closing upstream left unanswered
UPSTREAM_POOL = 16  # upstream UDP sockets per family, each on its own random port
UPSTREAM_ROTATE = 32  # queries one sends before a fresh socket (a new port) takes its place
IP_FREEBIND = 15  # linux/in.h; the socket module has no name for it before Python 3.12
UDP_RECEIVE_BUFFER = 4 << 20  # a burst of queries waits in the kernel, not dropped there

PeerOf = Callable[[str], Hashable | None]


class MappingSink(Protocol):
    """Where proxy mappings go (the crypto process, gateway/dataplane/mappings.py)."""

    def send(self, mapping: ProxyMapping) -> None: ...

    def when_applied(self, callback: Callable[[], None]) -> None: ...

    def receive(self) -> None: ...


def bound_socket(
    host: str, port: int, kind: socket.SocketKind, device: str | None = None
) -> socket.socket:
    """A socket bound to (host, port) even before the address is usable: a tunnel's IPv6
    address is tentative for a moment after it was added (DAD), hence IP_FREEBIND; with
    `device`, it takes only what arrives through that interface."""
    family = socket.AF_INET if ipaddress.ip_address(host).version == 4 else socket.AF_INET6  # noqa: PLR2004 - IP version
    sock = socket.socket(family, kind)
    try:
        sock.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)
        if device is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, device.encode())
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        else:
            set_socket_buffer(sock, socket.SO_RCVBUF, SO_RCVBUFFORCE, UDP_RECEIVE_BUFFER)
        sock.bind((host, port))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


@functools.lru_cache(maxsize=256)  # a few upstreams: parsed once, not per answer
def normalize(endpoint: Endpoint) -> Endpoint:
    """The form a received datagram's source takes, so upstream answers match their key."""
    return str(ipaddress.ip_address(endpoint[0])), endpoint[1]


@functools.lru_cache(maxsize=256)
def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET if ipaddress.ip_address(host).version == 4 else socket.AF_INET6  # noqa: PLR2004 - IP version


def _frame(wire: bytes) -> bytes:
    return len(wire).to_bytes(2, "big") + wire


class _Listener(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer, index: int) -> None:
        self.server = server
        self.index = index

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        address = str(addr[0])
        admitted, peer = self.server.admit(address)
        if admitted:
            client = Client(Transport.UDP, address, int(addr[1]), listener=self.index, peer=peer)
            self.server.query(client, data)


class _TcpClient:
    """One client connection: its writer and how many of its queries are unanswered."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.unanswered = 0
        self.answered = asyncio.Event()

    def write(self, wire: bytes) -> None:
        self.unanswered = max(0, self.unanswered - 1)
        self.answered.set()
        if not self.writer.is_closing():
            self.writer.write(_frame(wire))

    async def wait_for_room(self) -> None:
        """Until the client may send another query (backpressure)."""
        while self.unanswered >= MAX_TCP_PIPELINE:
            self.answered.clear()
            await self.answered.wait()
        if self.writer.transport.get_write_buffer_size() > TCP_WRITE_LIMIT:
            await self.writer.drain()


class _UpstreamTcp:
    """One pipelined TCP connection to an upstream, opened when a query needs it."""

    def __init__(self, server: DnsServer, upstream: Endpoint) -> None:
        self.server = server
        self.upstream = upstream
        self.unanswered: OrderedDict[bytes, bytes] = OrderedDict()  # id -> query
        self.writer: asyncio.StreamWriter | None = None
        self.running = False

    def ask(self, wire: bytes) -> None:
        self.unanswered[wire[:2]] = wire
        while len(self.unanswered) > MAX_UPSTREAM_TCP_QUEUE:
            self.unanswered.popitem(last=False)  # long timed out: the forwarder answered it
        if self.writer is not None and not self.writer.is_closing():
            self.writer.write(_frame(wire))
        elif not self.running:
            self.running = True
            self.server.spawn(self._run())

    async def _run(self) -> None:
        failures = 0
        try:
            while self.unanswered and failures <= UPSTREAM_TCP_RETRIES:
                answered, ended_early = await self._connection()
                if not ended_early:
                    break
                failures = 0 if answered else failures + 1
        finally:
            self.running = False
            self.writer = None
            self.unanswered.clear()  # the forwarder's timeout answers their clients

    async def _connection(self) -> tuple[int, bool]:
        """One connection's life: how many answers it brought, and whether the upstream
        closed it with queries unanswered (many close after each answer: ask again)."""
        host, port = self.upstream
        timeout = self.server.forwarder.timeout
        answered = 0
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(host, port)
        except (OSError, TimeoutError) as exc:
            log.debug("upstream %s:%d over TCP: %s", host, port, exc)
            return answered, False
        self.writer = writer
        writer.writelines([_frame(wire) for wire in self.unanswered.values()])
        try:
            while True:
                async with asyncio.timeout(timeout if self.unanswered else TCP_IDLE):
                    size = int.from_bytes(await reader.readexactly(2), "big")
                    wire = await reader.readexactly(size)
                answered += 1
                self.unanswered.pop(wire[:2], None)
                self.server.dispatch(
                    self.server.forwarder.handle_response(
                        self.upstream, Transport.TCP, wire, time.monotonic()
                    )
                )
        except TimeoutError:
            return answered, False  # idle, or a silent upstream (the forwarder times out)
        except (OSError, asyncio.IncompleteReadError) as exc:
            log.debug("upstream %s:%d over TCP: %s", host, port, exc)
            return answered, True
        finally:
            self.writer = None
            writer.close()


class _UpstreamUdp:
    """Sockets to the upstreams: UPSTREAM_POOL per family, each on a port the kernel picked
    at random, a random one per query; one that sent UPSTREAM_ROTATE queries gives its place
    to a fresh one (a new port) and is closed once its last query timed out. Cheaper than a
    socket per query (six system calls), and an off-path forger still has to hit a port that
    changes all the time, besides the id and the 0x20 case."""

    def __init__(self, server: DnsServer) -> None:
        self._server = server
        self._pools: dict[socket.AddressFamily, list[list[Any]]] = {}  # [socket, sent]
        self._retired: deque[tuple[float, socket.socket]] = deque()

    def send(self, upstream: Endpoint, wire: bytes) -> bool:
        family = _family(upstream[0])
        pool = self._pools.setdefault(family, [])
        try:
            while len(pool) < UPSTREAM_POOL:
                pool.append([self._open(family), 0])
        except OSError as exc:
            log.warning("no socket to the upstreams: %s", exc)
            if not pool:
                return False
        index = secrets.randbelow(len(pool))
        entry = pool[index]
        try:
            entry[0].sendto(wire, upstream)
        except OSError as exc:
            log.debug("upstream %s:%d: %s", upstream[0], upstream[1], exc)
            return False
        entry[1] += 1
        if entry[1] >= UPSTREAM_ROTATE:
            deadline = time.monotonic() + self._server.forwarder.timeout
            self._retired.append((deadline, entry[0]))
            del pool[index]  # its place is taken by a fresh socket on the next send
        return True

    def _open(self, family: socket.AddressFamily) -> socket.socket:
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.bind(("0.0.0.0" if family == socket.AF_INET else "::", 0))  # noqa: S104 - sends only to the upstreams; answers are matched by the forwarder
        except OSError:
            sock.close()
            raise
        asyncio.get_running_loop().add_reader(sock.fileno(), self._readable, sock)
        return sock

    def _readable(self, sock: socket.socket) -> None:
        server = self._server
        for _ in range(64):  # then let the loop serve others
            try:
                data, source = sock.recvfrom(MAX_MESSAGE)
            except BlockingIOError:
                return
            except OSError as exc:  # ICMP unreachable: the forwarder's timeout answers
                log.debug("upstream socket error: %s", exc)
                continue
            upstream = normalize((source[0], source[1]))
            server.dispatch(
                server.forwarder.handle_response(upstream, Transport.UDP, data, time.monotonic())
            )

    def close_retired(self, now: float) -> None:
        while self._retired and self._retired[0][0] <= now:
            _close(self._retired.popleft()[1])

    def close(self) -> None:
        for pool in self._pools.values():
            for sock, _ in pool:
                _close(sock)
        self._pools.clear()
        while self._retired:
            _close(self._retired.popleft()[1])


def _close(sock: socket.socket) -> None:
    asyncio.get_running_loop().remove_reader(sock.fileno())
    sock.close()


class DnsServer:
    def __init__(  # noqa: PLR0913 - the sockets' inputs, keyword-only after the resources
        self,
        forwarder: Forwarder,
        listen: Sequence[Endpoint],
        resources: ResourceAnswers | None = None,
        mappings: MappingSink | None = None,
        *,
        device: str | None = None,
        peer_of: PeerOf | None = None,
    ) -> None:
        self.forwarder = forwarder
        self.listen = tuple(listen)
        self.resources = resources
        self.mappings = mappings
        self.device = device
        self.peer_of = peer_of
        self._listeners: list[asyncio.DatagramTransport] = []
        self._upstream_udp = _UpstreamUdp(self)
        self._upstream_tcp: dict[Endpoint, _UpstreamTcp] = {}
        self._tcp_servers: list[asyncio.Server] = []
        self._tcp_clients: dict[int, _TcpClient] = {}
        self._next_connection = 1
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self.counters: dict[str, int] = {"tcp_clients_refused": 0, "upstream_send_errors": 0}

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        # One socket per UDP query in flight, beside the clients' connections.
        _raise_fd_limit(self.forwarder.max_in_flight + 2 * MAX_TCP_CLIENTS + 64)
        for index, (host, port) in enumerate(self.listen):
            listener, _ = await loop.create_datagram_endpoint(
                functools.partial(_Listener, self, index),
                sock=bound_socket(host, port, socket.SOCK_DGRAM, self.device),
            )
            self._listeners.append(listener)
            self._tcp_servers.append(
                await asyncio.start_server(
                    self._tcp_client,
                    sock=bound_socket(host, port, socket.SOCK_STREAM, self.device),
                )
            )
        self.spawn(self._expiry())

    async def close(self) -> None:
        for server in self._tcp_servers:
            server.close()
        for connection in list(self._tcp_clients.values()):
            connection.writer.close()
        for listener in self._listeners:
            listener.close()
        self._upstream_udp.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def tcp_clients(self) -> list[_TcpClient]:
        return list(self._tcp_clients.values())

    def spawn(self, coroutine: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---- queries and answers --------------------------------------------------------------

    def admit(self, address: str) -> tuple[bool, Hashable | None]:
        """Whether a query from `address` is answered, and the peer it counts against."""
        if self.peer_of is None:
            return True, None
        peer = self.peer_of(address)
        if peer is None:
            self.forwarder.counters["dropped_not_peer"] += 1
            return False, None
        return True, peer

    def query(self, client: Client, wire: bytes) -> None:
        now = time.monotonic()
        if self.resources is not None:
            if self.mappings is not None:
                self.mappings.receive()  # a crypto restart first: its mappings go again
            self._dispatch_ordered(self.resources.handle_query(client, wire, now))
        else:
            self.dispatch(self.forwarder.handle_query(client, wire, now))

    def _dispatch_ordered(self, events: Iterable[Event]) -> None:
        """Mappings out; answers to clients once the mappings before them are applied."""
        for event in events:
            if isinstance(event, ToClient) and self.mappings is not None:
                self.mappings.when_applied(functools.partial(self._answer, event))
            else:
                self.dispatch(event)

    def dispatch(self, output: Event | None) -> None:
        if output is None:
            return
        if isinstance(output, ProxyMapping):
            if self.mappings is not None:
                self.mappings.send(output)
            return
        if isinstance(output, ToUpstream):
            self._wake.set()  # a new deadline
            if output.transport is Transport.UDP:
                self._send_udp(output)
            else:
                upstream = self._upstream_tcp.get(output.upstream)
                if upstream is None:
                    upstream = self._upstream_tcp[output.upstream] = _UpstreamTcp(
                        self, output.upstream
                    )
                upstream.ask(output.wire)
            return
        self._answer(output)

    def _answer(self, answer: ToClient) -> None:
        client = answer.client
        if isinstance(client, Lookup):
            if self.resources is not None:
                self._dispatch_ordered(
                    self.resources.handle_lookup(client, answer.wire, time.monotonic())
                )
            return
        if client.transport is Transport.UDP:
            self._listeners[client.listener].sendto(answer.wire, (client.address, client.port))
            return
        connection = self._tcp_clients.get(client.connection)
        if connection is not None:
            connection.write(answer.wire)

    def _send_udp(self, output: ToUpstream) -> None:
        if not self._upstream_udp.send(output.upstream, output.wire):
            self.counters["upstream_send_errors"] += 1  # the forwarder's timeout answers

    # ---- TCP clients -------------------------------------------------------------------------

    async def _tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer_address = writer.get_extra_info("peername")
        admitted, peer = self.admit(str(peer_address[0]))
        if not admitted or len(self._tcp_clients) >= MAX_TCP_CLIENTS:
            if admitted:
                self.counters["tcp_clients_refused"] += 1
            writer.close()
            return
        writer.transport.set_write_buffer_limits(high=TCP_WRITE_LIMIT)
        # The kernel's share too: a send buffer that autotunes would hold up to 4 MiB.
        client_socket = writer.get_extra_info("socket")
        if client_socket is not None:
            with contextlib.suppress(OSError):
                client_socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, TCP_WRITE_LIMIT)
        number = self._next_connection
        self._next_connection += 1
        connection = self._tcp_clients[number] = _TcpClient(writer)
        listener = self._tcp_listener_index(writer)
        try:
            while True:
                async with asyncio.timeout(TCP_IDLE):
                    await connection.wait_for_room()
                    size = int.from_bytes(await reader.readexactly(2), "big")
                    wire = await reader.readexactly(size)
                client = Client(
                    Transport.TCP,
                    str(peer_address[0]),
                    int(peer_address[1]),
                    listener=listener,
                    connection=number,
                    peer=peer,
                )
                connection.unanswered += 1
                self.query(client, wire)
        except (OSError, TimeoutError, asyncio.IncompleteReadError):
            pass
        finally:
            del self._tcp_clients[number]
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    def _tcp_listener_index(self, writer: asyncio.StreamWriter) -> int:
        local = writer.get_extra_info("sockname")
        for index, (host, port) in enumerate(self.listen):
            if ipaddress.ip_address(host) == ipaddress.ip_address(local[0]) and port == local[1]:
                return index
        return 0

    # ---- time --------------------------------------------------------------------------------

    async def _expiry(self) -> None:
        """SERVFAIL for queries whose upstream is silent; sleeps while nothing is pending."""
        while True:
            self._wake.clear()  # before reading the deadline, so no new one is missed
            deadline = self.forwarder.next_deadline()
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            now = time.monotonic()
            for answer in self.forwarder.expire(now):
                self._answer(answer)
            self._upstream_udp.close_retired(now)


def _raise_fd_limit(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
