"""New DNS-resource names a second: how fast the DNS server hands out proxy addresses for
names it has never seen, and in what order the answers leave.

Four processes on loopback, each the real code where it matters: the DnsServer with a
ResourceAnswers for `*.corp.test` and a MappingSender, as the fzgw-dns process builds them
(this process); the crypto process's end of the mappings socket applying each mapping to a
real ProxyHandler (`receive_mappings`), looking at the socket every CONTROL_CHECK_INTERVAL as
`run_crypto` does while it carries traffic; an upstream that answers every A query at once;
a client (one peer) that keeps WINDOW queries for new names outstanding, as the issue's
client did (500 at a time). Prints names/s, the DNS process's CPU per name (what bounds it
on a busy machine), the share answered within the client's 4 s, how many answers left out
of order, and the DNS process's peak memory growth.

`--tcp-client N` measures something else: the DNS server's memory growth while one TCP
client pipelines N queries for a 20 KB answer and never reads (15 s).

python -m bench.bench_dns [--names N] [--window W] [--tcp-client N]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import multiprocessing
import os
import resource
import select
import socket
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset

from gateway.dataplane.cryptoproc import CONTROL_CHECK_INTERVAL
from gateway.dataplane.mappings import MappingPair, MappingSender, apply_message, receive_mappings
from gateway.dns.forwarder import Forwarder
from gateway.dns.resources import ResourceAnswers
from gateway.dns.server import DnsServer
from gateway.nat.handler import ProxyHandler
from gateway.resources.names import parse_name_pattern
from gateway.resources.resource import Resource, parse_resource_address

RESULTS = Path(__file__).parent / "results" / "dns.json"
PEER = b"P" * 32
CLIENT_TIMEOUT = 4.0  # what the client waited


def upstream(ready: Connection) -> None:
    """Answers every A query with an address, every other query with no records."""

    async def serve() -> None:
        class Answer(asyncio.DatagramProtocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.transport: Any = transport

            def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
                query = dns.message.from_wire(data)
                response = dns.message.make_response(query)
                question = query.question[0]
                if question.rdtype == dns.rdatatype.A:
                    response.answer.append(
                        dns.rrset.from_text(question.name, 30, "IN", "A", "10.99.0.7")
                    )
                self.transport.sendto(response.to_wire(), addr)

        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(Answer, local_addr=("127.0.0.1", 0))
        ready.send(transport.get_extra_info("sockname")[1])
        await asyncio.Event().wait()

    asyncio.run(serve())


def crypto_side(sock: socket.socket) -> None:
    """The crypto process's end, busy: a look at the socket every CONTROL_CHECK_INTERVAL."""
    resources = [Resource("corp", parse_resource_address("*.corp.test"))]
    handler = ProxyHandler(resources, {PEER: frozenset({0})}, lambda _packet: None)
    while True:
        time.sleep(CONTROL_CHECK_INTERVAL)
        if select.select([sock], [], [], 0)[0]:
            receive_mappings(sock, lambda message: apply_message(handler, message))


def client(server: tuple[str, int], names: int, window: int, out: Connection) -> None:
    """Keeps `window` queries for new names outstanding; reports when each answer came."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sent_at: dict[int, float] = {}
    answers: list[tuple[int, float, int]] = []  # (query number, latency, rcode)
    next_name = 0
    start = time.monotonic()
    while len(answers) < names:
        while next_name < names and next_name - len(answers) < window:
            query = dns.message.make_query(f"n{next_name}.corp.test", "A")
            query.id = next_name % 65536
            sock.sendto(query.to_wire(), server)
            sent_at[next_name] = time.monotonic()
            next_name += 1
        if not select.select([sock], [], [], 10)[0]:
            break  # lost answers: the report says how many came
        reply = dns.message.from_wire(sock.recv(4096))
        number = int(str(reply.question[0].name).split(".")[0][1:])
        answers.append((number, time.monotonic() - sent_at[number], reply.rcode()))
    out.send({"elapsed": time.monotonic() - start, "answers": answers})


async def serve(server: DnsServer, sender: MappingSender) -> None:
    sender.attach(asyncio.get_running_loop())
    await server.start()
    await asyncio.Event().wait()


HUGE = list(  # about 20 KB of TXT
    dns.rrset.from_text("huge.test.", 60, "IN", "TXT", *(f'"{"x" * 250}{i:03}"' for i in range(80)))
)


async def huge_answers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """An upstream over TCP: the 20 KB answer to every query, pipelined."""
    with contextlib.suppress(asyncio.IncompleteReadError, OSError):
        while True:
            size = int.from_bytes(await reader.readexactly(2), "big")
            query = dns.message.from_wire(await reader.readexactly(size))
            response = dns.message.make_response(query)
            response.answer.append(dns.rrset.from_rdata_list(query.question[0].name, 60, HUGE))
            wire = response.to_wire(max_size=65535)
            writer.write(len(wire).to_bytes(2, "big") + wire)
            await writer.drain()


async def tcp_client_memory(count: int) -> None:
    upstream_server = await asyncio.start_server(huge_answers, "127.0.0.1", 0)
    port = upstream_server.sockets[0].getsockname()[1]
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    listen = ("127.0.0.1", probe.getsockname()[1])
    probe.close()
    server = DnsServer(Forwarder([("127.0.0.1", port)]), [listen])
    await server.start()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    client_socket = socket.socket()
    client_socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # and never reads
    client_socket.connect(listen)
    client_socket.setblocking(False)
    loop = asyncio.get_running_loop()
    for number in range(count):
        query = dns.message.make_query("huge.test", "TXT")
        query.id = number % 65536
        wire = query.to_wire()
        await loop.sock_sendall(client_socket, len(wire).to_bytes(2, "big") + wire)
    await asyncio.sleep(15)
    growth = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    print(f"queries sent {count:,}, read and forwarded {server.forwarder.counters['forwarded']:,}")
    print(f"DNS server memory growth {growth:.1f} MiB")
    client_socket.close()
    await server.close()
    upstream_server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--names", type=int, default=5000)
    parser.add_argument("--window", type=int, default=500)
    parser.add_argument("--tcp-client", type=int, default=0, metavar="N")
    args = parser.parse_args()
    if args.tcp_client:
        asyncio.run(tcp_client_memory(args.tcp_client))
        return
    ctx = multiprocessing.get_context("fork")
    up_ready, up_port = ctx.Pipe()
    processes = [ctx.Process(target=upstream, args=(up_ready,), daemon=True)]
    processes[0].start()
    upstream_port = up_port.recv()
    pair = MappingPair.create()
    processes.append(ctx.Process(target=crypto_side, args=(pair.crypto,), daemon=True))
    processes[-1].start()
    forwarder = Forwarder([("127.0.0.1", upstream_port)])
    answers = ResourceAnswers(
        [(0, parse_name_pattern("*.corp.test"))], {PEER: [0]}, {"127.0.0.1": PEER}.get, forwarder
    )
    sender = MappingSender(pair.dns)
    listen_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listen_sock.bind(("127.0.0.1", 0))
    listen = ("127.0.0.1", listen_sock.getsockname()[1])
    listen_sock.close()
    peer_of = {"127.0.0.1": PEER}.get
    server = DnsServer(forwarder, [listen], answers, sender, device="lo", peer_of=peer_of)
    result_in, result_out = ctx.Pipe()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    cpu_before = time.process_time()
    processes.append(
        ctx.Process(target=client, args=(listen, args.names, args.window, result_out), daemon=True)
    )
    loop = asyncio.new_event_loop()
    task = loop.create_task(serve(server, sender))
    loop.call_later(0.2, processes[-1].start)

    result: dict[str, Any] = {}

    def collect() -> None:
        if result_in.poll():
            result.update(result_in.recv())
            task.cancel()
        else:
            loop.call_later(0.05, collect)

    loop.call_later(0.3, collect)
    with contextlib.suppress(asyncio.CancelledError):
        loop.run_until_complete(task)
    print(dict(forwarder.counters), f"unacknowledged={sender.unacknowledged}")
    rss_growth_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
    cpu_ms_per_name = (time.process_time() - cpu_before) * 1000 / args.names
    for process in processes:
        if process.pid is not None:
            os.kill(process.pid, 9)
        process.join()
    pair.close()
    report(result, args.names, args.window, rss_growth_kib, len(answers), cpu=cpu_ms_per_name)


def report(
    result: dict[str, Any], names: int, window: int, rss_growth_kib: int, live: int, *, cpu: float
) -> None:
    answered = [a for a in result["answers"] if a[2] == dns.rcode.NOERROR]
    in_time = sum(1 for _, latency, _ in answered if latency <= CLIENT_TIMEOUT)
    numbers = [number for number, _, _ in result["answers"]]
    out_of_order = sum(1 for a, b in itertools.pairwise(numbers) if b < a)
    rows = {
        "names": names,
        "window": window,
        "new_names_per_s": len(answered) / result["elapsed"],
        "dns_cpu_ms_per_name": cpu,
        "answered_within_4s": in_time,
        "out_of_order_answers": out_of_order,
        "dns_rss_growth_mib": rss_growth_kib / 1024,
        "live_mappings": live,
    }
    for key, value in rows.items():
        print(f"{key:22} {value:,.1f}" if isinstance(value, float) else f"{key:22} {value:,}")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
