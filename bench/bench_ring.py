"""Process-to-process throughput: shm_ring vs multiprocessing.Queue vs a SOCK_SEQPACKET socketpair.

Run: `python -m bench.bench_ring [--packets N] [--repeats R]`. A forked producer moves N packets
of 1280 bytes to the consumer (this process) in batches of 1, 32 and 100: the ring publishes
each batch once (send_many), the Queue carries one list per batch (pickled once), the socket
sends one datagram per packet (Python has no sendmmsg). Prints medians, writes JSON to
bench/results/bench_ring.json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import select
import socket
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from shm_ring import Ring

PACKET = 1280
BATCHES = (1, 32, 100)


def _fork(body: Callable[[], None]) -> int:
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            body()
        except BaseException:  # noqa: BLE001 - the child reports failure by exit code
            code = 1
        os._exit(code)
    return pid


def _join(pid: int) -> None:
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"producer {pid} failed")


def _sleep_on(ring: Ring, *, consumer: bool, ep: select.epoll) -> None:
    if consumer and ring.consumer_arm():
        ep.poll()
        ring.consumer_disarm()
    elif not consumer and ring.producer_arm():
        ep.poll()
        ring.producer_disarm()


def run_ring(total: int, batch: int) -> float:
    name = f"fzgw-bench-{os.getpid()}"
    ring = Ring.create(name, slots=1000, slot_size=PACKET)
    packets = [os.urandom(PACKET) for _ in range(batch)]
    go_r, go_w = os.pipe()

    def producer() -> None:
        ep = select.epoll()
        ep.register(ring.producer_fd(), select.EPOLLIN)
        os.read(go_r, 1)
        sent = 0
        while sent < total:
            todo = packets if total - sent >= batch else packets[: total - sent]
            taken = ring.send_many(todo) if batch > 1 else int(ring.send(todo[0]))
            sent += taken
            if taken < len(todo):
                _sleep_on(ring, consumer=False, ep=ep)

    try:
        pid = _fork(producer)
        ep = select.epoll()
        ep.register(ring.consumer_fd(), select.EPOLLIN)
        got = nbytes = 0
        start = time.perf_counter()
        os.write(go_w, b"g")
        while got < total:
            views = ring.recv_many(batch)
            if not views:
                _sleep_on(ring, consumer=True, ep=ep)
                continue
            for view in views:
                nbytes += len(view)
            got += len(views)
            del views, view
            ring.release()
        elapsed = time.perf_counter() - start
        _join(pid)
        if nbytes != total * PACKET:
            raise RuntimeError("ring lost bytes")
        return elapsed
    finally:
        ring.close()
        os.close(go_r)
        os.close(go_w)


def run_queue(total: int, batch: int) -> float:
    """One put/get per packet (batch 1) or one list of `batch` packets per put/get."""
    queue: multiprocessing.Queue[bytes | list[bytes]] = multiprocessing.Queue(maxsize=1000 // batch)
    packets = [os.urandom(PACKET) for _ in range(batch)]
    go_r, go_w = os.pipe()

    def producer() -> None:
        os.read(go_r, 1)
        sent = 0
        while sent < total:
            todo = packets if total - sent >= batch else packets[: total - sent]
            queue.put(todo if batch > 1 else todo[0])
            sent += len(todo)
        queue.close()
        queue.join_thread()

    pid = _fork(producer)
    got = nbytes = 0
    start = time.perf_counter()
    os.write(go_w, b"g")
    while got < total:
        items = queue.get()
        if isinstance(items, bytes):
            nbytes += len(items)
            got += 1
            continue
        for item in items:
            nbytes += len(item)
        got += len(items)
    elapsed = time.perf_counter() - start
    if nbytes != total * PACKET:
        raise RuntimeError("queue lost bytes")
    _join(pid)
    os.close(go_r)
    os.close(go_w)
    return elapsed


def run_seqpacket(total: int, batch: int) -> float:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    packet = os.urandom(PACKET)
    go_r, go_w = os.pipe()

    def producer() -> None:
        os.read(go_r, 1)
        for _ in range(total):
            a.send(packet)

    pid = _fork(producer)
    buf = bytearray(PACKET)
    got = nbytes = 0
    start = time.perf_counter()
    os.write(go_w, b"g")
    while got < total:
        for _ in range(min(batch, total - got)):  # read up to a batch per wake-up
            nbytes += b.recv_into(buf)
            got += 1
    elapsed = time.perf_counter() - start
    _join(pid)
    for s in (a, b):
        s.close()
    os.close(go_r)
    os.close(go_w)
    return elapsed


def syscall_read_cost(count: int = 20000) -> float:
    """ns per read of one queued 1280-byte datagram: a lower bound for one TUN read."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
    b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    a.setblocking(False)
    packet, buf, fd = os.urandom(PACKET), bytearray(PACKET), b.fileno()
    best = float("inf")
    for _ in range(5):
        queued = 0
        for _ in range(count):
            try:
                a.send(packet)
            except BlockingIOError:
                break
            queued += 1
        start = time.perf_counter_ns()
        for _ in range(queued):
            os.readv(fd, [buf])
        best = min(best, (time.perf_counter_ns() - start) / queued)
    a.close()
    b.close()
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--packets", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    transports = {"shm_ring": run_ring, "mp.Queue": run_queue, "seqpacket": run_seqpacket}
    keys = [(label, batch) for batch in BATCHES for label in transports]
    # Repeats are interleaved (every transport once per round) and ratios are taken within a
    # round, so load from other processes on a shared machine hits all of them alike.
    times: dict[tuple[str, int], list[float]] = {key: [] for key in keys}
    for _ in range(args.repeats):
        for label, batch in keys:
            times[label, batch].append(transports[label](args.packets, batch))
    rows = []
    print(
        f"{'batch':>5} {'transport':<10} {'packets/s':>12} {'ns/packet':>10} "
        f"{'vs Queue/pkt':>12} {'vs Queue same batch':>19}"
    )
    for label, batch in keys:
        mine = times[label, batch]
        median = statistics.median(mine)
        vs_packet = statistics.median(
            q / t for q, t in zip(times["mp.Queue", 1], mine, strict=True)
        )
        vs_batch = statistics.median(
            q / t for q, t in zip(times["mp.Queue", batch], mine, strict=True)
        )
        rows.append(
            {
                "transport": label,
                "batch": batch,
                "packets": args.packets,
                "median_s": median,
                "pps": args.packets / median,
                "ns_per_packet": median / args.packets * 1e9,
                "vs_queue_per_packet": vs_packet,
                "vs_queue_same_batch": vs_batch,
            }
        )
        print(
            f"{batch:>5} {label:<10} {args.packets / median:>12,.0f} "
            f"{median / args.packets * 1e9:>10,.0f} {vs_packet:>11.1f}x {vs_batch:>18.1f}x"
        )
    read_ns = syscall_read_cost()
    print(f"one 1280-byte datagram read syscall (lower bound of a TUN read): {read_ns:,.0f} ns")
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    result = {
        "packet_bytes": PACKET,
        "rows": rows,
        "read_syscall_ns": read_ns,
        "cpus": os.cpu_count(),
    }
    (out / "bench_ring.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
