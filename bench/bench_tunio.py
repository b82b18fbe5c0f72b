"""TUN queue read and write rates from Python, 1280-byte packets.

    sudo .venv/bin/python -m bench.bench_tunio [--reps 7]

Runs in a namespace of its own (removed afterwards). Reads: the kernel fills a queue with
`--batch` packets (at most txqueuelen, 10000) from a UDP socket, then the timed loop drains it
with recv_many; read variants compare os.read buffer sizes and os.readv into a preallocated
buffer. Writes: send() of packets to a routed, non-local address (the kernel takes and drops
them; forwarding is off). "2 procs" runs one queue per forked process at the same time.
Prints medians over --reps and writes bench/results/tunio.json.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import socket
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from testbed import tun_packets
from testbed.netns import NetNS, unique_name
from tunio import TunDeviceManager, TunQueue, open_multiqueue
from tunio._netns import entered_netns

PACKET_SIZE = 1280
TUN_ADDR = "10.250.0.1"
PEER = "10.251.0.5"
PAYLOAD = bytes(PACKET_SIZE - 28)


def fill(queue: TunQueue, sock: socket.socket, count: int) -> None:
    """Steer the socket's flow to `queue` (it last wrote the flow) and queue `count` packets."""
    port = sock.getsockname()[1]
    queue.send(tun_packets.udp(PEER, 7777, TUN_ADDR, port, b"steer"))
    sock.recv(64)
    for _ in range(count):
        sock.sendto(PAYLOAD, (PEER, 7777))


def drain(queue: TunQueue) -> None:
    while queue.recv_many():
        pass


def read_variants(queue: TunQueue) -> dict[str, Callable[[int], int]]:
    fd = queue.fileno()
    buf = bytearray(65535)

    def os_read(size: int) -> Callable[[int], int]:
        def run(count: int) -> int:
            got = 0
            try:
                while got < count:
                    os.read(fd, size)
                    got += 1
            except BlockingIOError:
                pass
            return got

        return run

    def readv_copy(count: int) -> int:
        got = 0
        view = memoryview(buf)
        try:
            while got < count:
                n = os.readv(fd, [buf])
                bytes(view[:n])
                got += 1
        except BlockingIOError:
            pass
        return got

    def recv_many(count: int) -> int:
        got = 0
        while got < count and (batch := queue.recv_many(100)):
            got += len(batch)
        return got

    return {
        "recv_many(100)": recv_many,
        "os.read 65535": os_read(65535),
        "os.read 2048": os_read(2048),
        "os.readv+copy": readv_copy,
    }


def time_reads(queue: TunQueue, sock: socket.socket, reader: Callable[[int], int], n: int) -> float:
    drain(queue)
    fill(queue, sock, n)
    start = time.perf_counter_ns()
    got = reader(n)
    elapsed = time.perf_counter_ns() - start
    if got < n * 0.9:
        raise RuntimeError(f"only {got} of {n} packets were queued: raise txqueuelen")
    return elapsed / got


def time_writes(queue: TunQueue, n: int) -> float:
    packet = tun_packets.udp(PEER, 7777, "10.254.9.9", 9, PAYLOAD)
    send = queue.send
    start = time.perf_counter_ns()
    for _ in range(n):
        send(packet)
    return (time.perf_counter_ns() - start) / n


def in_two_processes(job: Callable[[int], float]) -> float:
    """Run job(i) in 2 forked processes started together; aggregate ns per packet."""
    go_r, go_w = os.pipe()
    res_r, res_w = os.pipe()
    pids = []
    for i in range(2):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.read(go_r, 1)
                os.write(res_w, f"{job(i)}\n".encode())
                code = 0
            finally:
                os._exit(code)
        pids.append(pid)
    os.write(go_w, b"gg")
    for pid in pids:
        os.waitpid(pid, 0)
    os.close(res_w)
    with os.fdopen(res_r) as results:
        per_packet = [float(line) for line in results]
    for fd in (go_r, go_w):
        os.close(fd)
    # Each process handled its packets at its own rate; together: the sum of the rates.
    return 1e9 / sum(1e9 / ns for ns in per_packet)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--batch", type=int, default=8000, help="packets per read rep")
    parser.add_argument("--writes", type=int, default=50000, help="packets per write rep")
    args = parser.parse_args()
    ns = NetNS("fzt4b")
    queues: list[TunQueue] = []
    socks: list[socket.socket] = []
    try:
        name = unique_name("fzt4bench")
        queues = open_multiqueue(name, 2, netns=ns.name)
        TunDeviceManager(name, netns=ns.name).configure(
            1280, [ipaddress.IPv4Interface(f"{TUN_ADDR}/24")], [ipaddress.IPv4Network("10.0.0.0/8")]
        )
        for _ in queues:
            with entered_netns(ns.name):
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind((TUN_ADDR, 0))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 22)
            socks.append(sock)
        results: dict[str, list[float]] = {}
        for _ in range(args.reps):
            for label, reader in read_variants(queues[0]).items():
                ns_pp = time_reads(queues[0], socks[0], reader, args.batch)
                results.setdefault(f"read 1 queue, {label}", []).append(ns_pp)
            results.setdefault("write 1 queue, send()", []).append(
                time_writes(queues[0], args.writes)
            )
            # Two queues: fill both first (flows steered one per queue), then drain in parallel.
            for queue, sock in zip(queues, socks, strict=True):
                drain(queue)
                fill(queue, sock, args.batch)

            def read_job(i: int) -> float:
                start = time.perf_counter_ns()
                got = read_variants(queues[i])["recv_many(100)"](args.batch)
                return (time.perf_counter_ns() - start) / max(got, 1)

            results.setdefault("read 2 queues, 2 procs", []).append(in_two_processes(read_job))
            results.setdefault("write 2 queues, 2 procs", []).append(
                in_two_processes(lambda i: time_writes(queues[i], args.writes))
            )
        report(results, args)
    finally:
        for sock in socks:
            sock.close()
        for queue in queues:
            queue.close()
        ns.close()


def report(results: dict[str, list[float]], args: argparse.Namespace) -> None:
    rows = []
    print(f"{'case':40} {'ns/packet':>10} {'packets/s':>12} {'Gbit/s':>8}")
    for case, samples in results.items():
        median = statistics.median(samples)
        pps = 1e9 / median
        rows.append({"case": case, "ns_per_packet": median, "pps": pps, "samples": samples})
        print(f"{case:40} {median:10.0f} {pps:12,.0f} {pps * PACKET_SIZE * 8 / 1e9:8.2f}")
    out = Path(__file__).parent / "results" / "tunio.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"packet_size": PACKET_SIZE, "reps": args.reps, "rows": rows}))
    print(f"medians of {args.reps} reps; JSON: {out}")


if __name__ == "__main__":
    main()
