"""UDP send (and send+receive) rates with and without GSO/GRO over loopback in a netns.

python -m bench.bench_udp_io

Datagrams are 1312 bytes (a 1280-byte packet in a WireGuard transport message), sent in
batches of 64 to one endpoint. "send" sends to a socket nobody reads (the kernel drops at
the receiver), so it measures the sending side alone; "send+recv" drains every batch with
recv_batch, so it includes the GRO split on the receiving side.

"ring -> socket" is the UDP process's send side as it runs: `UdpLoop.turn` taking full
batches (100) of framed datagrams from an shm ring and sending them to the sink, µs of
wall time per datagram inside `turn`, for each backend (native: gateway._native's
udp_send_from_ring; python: UdpIo.send_batch). "socket -> ring" is the receive side: a
GSO burst of 100 arrives (GRO on), `turn` reads it into the ring to crypto, µs per datagram
inside `turn` (native: gateway._native.UdpReceiver; python: recv_batch + frame_received).
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

from pyroute2 import netns as pyroute2_netns

from gateway.dataplane import udpproc
from gateway.dataplane.framing import HEADER_SIZE, encode_message
from gateway.dataplane.transport import BACKEND
from gateway.telemetry import stats as st
from gateway.udp_io import UdpIo
from shm_ring.ring import Ring
from testbed.netns import hosts

DATAGRAM = 1312
BATCH = 64
BATCHES = 1500
REPEATS = 5
RESULTS = Path(__file__).parent / "results" / "udp_io.json"


def send_rate(sender: UdpIo, port: int) -> float:
    items = [(("127.0.0.1", port), bytes(DATAGRAM))] * BATCH
    start = time.perf_counter()
    for _ in range(BATCHES):
        sender.send_batch(items)
    return BATCH * BATCHES / (time.perf_counter() - start)


def roundtrip_rate(sender: UdpIo, receiver: UdpIo) -> float:
    items = [(("127.0.0.1", receiver.port), bytes(DATAGRAM))] * BATCH
    received = 0
    start = time.perf_counter()
    for _ in range(BATCHES // 3):
        sender.send_batch(items)
        got = 0
        while got < BATCH:
            batch = receiver.recv_batch(BATCH - got)
            if not batch:
                break  # lost on loopback (should not happen): do not spin
            got += len(batch)
        received += got
    return received / (time.perf_counter() - start)


def ring_send_us(backend: str, sink_port: int, rounds: int = 600) -> float:
    """µs per datagram of UdpLoop.turn sending full batches from an shm ring."""
    counters = memoryview(bytearray(8 * st.PROCESS_BLOCK_WORDS)).cast("Q")
    with (
        UdpIo(0) as udp,
        Ring.create("bench-udp-in", slots=1000, slot_size=HEADER_SIZE + DATAGRAM) as to_crypto,
        Ring.create("bench-udp-out", slots=1000, slot_size=HEADER_SIZE + DATAGRAM) as out,
    ):
        loop = udpproc.UdpLoop(udp, to_crypto, out, counters, backend=backend)
        messages = [encode_message(("127.0.0.1", sink_port), bytes(DATAGRAM))] * udpproc.BATCH
        spent = 0.0
        for _ in range(rounds):
            out.send_many(messages)
            start = time.perf_counter()
            loop.turn(0.0)
            spent += time.perf_counter() - start
            loop.unsent.clear()  # a full socket's leftovers are not this measure's business
        return spent / (rounds * udpproc.BATCH) * 1e6


def ring_recv_us(backend: str, rounds: int = 300) -> float:
    """µs per datagram of UdpLoop.turn reading GSO bursts into an shm ring."""
    counters = memoryview(bytearray(8 * st.PROCESS_BLOCK_WORDS)).cast("Q")
    with (
        UdpIo(0) as udp,
        UdpIo(0) as sender,
        Ring.create("bench-udp-in", slots=1000, slot_size=HEADER_SIZE + DATAGRAM) as to_crypto,
        Ring.create("bench-udp-out", slots=1000, slot_size=HEADER_SIZE + DATAGRAM) as out,
    ):
        loop = udpproc.UdpLoop(udp, to_crypto, out, counters, backend=backend)
        burst = [(("127.0.0.1", udp.port), b"\x04" + bytes(DATAGRAM - 1))] * udpproc.BATCH
        spent, received = 0.0, 0
        for _ in range(rounds):
            sender.send_batch(burst)
            got = 0
            while got < udpproc.BATCH:
                start = time.perf_counter()
                moved = loop.turn(0.0)
                spent += time.perf_counter() - start
                got += len(to_crypto.recv_many(udpproc.BATCH))
                to_crypto.release()
                if not moved:
                    break  # lost on loopback (should not happen): do not spin
            received += got
        return spent / received * 1e6


def main() -> None:
    rows = []
    ring_rows: dict[str, float] = {}
    with hosts() as factory:
        ns = factory.add("fzxbench")
        pyroute2_netns.pushns(ns.name)
        try:
            for offload in (False, True):
                with (
                    UdpIo(0, gso=offload, gro=offload) as sender,
                    UdpIo(0, gso=offload, gro=offload) as receiver,
                    UdpIo(0, rcvbuf=4096) as sink,
                ):
                    send = statistics.median(send_rate(sender, sink.port) for _ in range(REPEATS))
                    both = statistics.median(
                        roundtrip_rate(sender, receiver) for _ in range(REPEATS)
                    )
                    if offload:
                        for backend in ("python", "native") if BACKEND == "native" else ("python",):
                            ring_rows[f"send, {backend}"] = min(
                                ring_send_us(backend, sink.port) for _ in range(REPEATS)
                            )
                            ring_rows[f"recv, {backend}"] = min(
                                ring_recv_us(backend) for _ in range(REPEATS)
                            )
                    rows.append(
                        {
                            "gso_gro": offload,
                            "send_datagrams_per_s": send,
                            "send_recv_datagrams_per_s": both,
                            "send_syscalls": sender.counters.tx_syscalls,
                            "gso_batches": sender.counters.tx_gso_batches,
                        }
                    )
        finally:
            pyroute2_netns.popns()
    print(f"{'GSO/GRO':>8} {'send dgram/s':>13} {'send+recv dgram/s':>18} {'Gbit/s send':>12}")
    for r in rows:
        gbit = r["send_datagrams_per_s"] * DATAGRAM * 8 / 1e9
        print(
            f"{'on' if r['gso_gro'] else 'off':>8} {r['send_datagrams_per_s']:>13,.0f}"
            f" {r['send_recv_datagrams_per_s']:>18,.0f} {gbit:>12.2f}"
        )
    ratio = rows[1]["send_datagrams_per_s"] / rows[0]["send_datagrams_per_s"]
    print(f"GSO send speed-up: {ratio:.1f}x")
    for case, us in ring_rows.items():
        print(f"UdpLoop.turn ring <-> socket (GSO/GRO), {case}: {us:.2f} µs per datagram (best)")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(
        json.dumps({"repeats": REPEATS, "median": rows, "udp_loop_us_best": ring_rows}, indent=2)
    )


if __name__ == "__main__":
    main()
