"""CPU time of one crypto-loop turn per packet, in one process, on real shm rings.

    python -m bench.bench_crypto_loop [--rounds 300] [--repeats 3] [--peers 1000] [--profile]
                                      [--backend native|python|device]

No network, no other process: the loop of gateway/dataplane/cryptoproc.py runs between
`shm_ring` rings this process fills and drains, on a session with a client Device (the
gateway has `--peers` peers, the client is one of them). Each round puts a batch of 100
tunnel datagrams (1280-byte TCP packets inside, as from the UDP process) in the UDP ring,
or 100 plaintext answers in a worker ring, and times `CryptoLoop.turn` alone in CPU time
(the filling and draining are the other processes' work and are not counted). Cases:
decrypt and encrypt, policy off (no firewall) and on (bench_policy's 100 resources, every
peer granted 10); and the floor of this design in Python: a loop that only takes a batch
from one ring, calls the AEAD once per packet and puts the results in the next ring. Each
run's figure is the median of its rounds; the cases alternate run by run and the table
shows the best run (CPU time, so a busy neighbour costs little, but this VM has phases
where everything runs 1.5x slower; the best run is outside them). `--profile` prints
cProfile's top functions of each case instead. `--backend`: the per-packet path the
gateway runs: the transport's batches, "native" (the default when built) or "python" (the
fallback), or "device" (every packet through the Device, as before the transport existed).
Writes bench/results/crypto-loop.json (µs per packet).
"""

from __future__ import annotations

import argparse
import cProfile
import ipaddress
import json
import pstats
import random
import statistics
import time
from collections.abc import Callable, Hashable
from ipaddress import IPv4Address
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from bench.bench_policy import GRANTS_PER_PEER, RESOURCES, resources
from gateway.dataplane import transport as tr
from gateway.dataplane.cryptoproc import BATCH, CryptoLoop
from gateway.dataplane.firewall import Firewall
from gateway.dataplane.framing import HEADER_SIZE, encode_endpoint
from gateway.dataplane.rings import CryptoRings
from gateway.keys import generate_private_key, public_key
from gateway.policy import Policy
from gateway.telemetry import stats as st
from gateway.wireguard.device import Device
from ippacket import build
from shm_ring.ring import Ring
from testbed.wire import A_ENDPOINT, B_ENDPOINT, Wire

RESULTS = Path(__file__).parent / "results" / "crypto-loop.json"
CLIENT, RESOURCE = IPv4Address("100.64.0.2"), IPv4Address("10.98.0.5")
PAYLOAD = bytes(1280 - 40)  # a full 1280-byte TCP packet
INNER_SLOT, DATAGRAM_SLOT = 1280, HEADER_SIZE + 32 + 1280 + 16  # as the supervisor sizes them
NOW = 1000.0


class Bench:
    """A gateway Device with its loop and rings, and a client with a session to it."""

    def __init__(self, peers: int, *, policy: bool, backend: str = tr.BACKEND) -> None:
        self.client = Device(generate_private_key())
        gateway_key = generate_private_key()
        transport = None if backend == "device" else tr.new_transport(backend)
        self.gateway = Device(gateway_key, unix_time_offset=0.0, transport=transport)
        client_key = self.client.public_key
        assert client_key is not None
        rng = random.Random(1)
        grants: dict[Hashable, list[str]] = {}
        others = [f"r{n}" for n in range(1, RESOURCES)]
        for i in range(peers):
            key = client_key if i == 0 else public_key(generate_private_key())
            address = ipaddress.ip_network(f"100.64.{i // 250}.{i % 250 + 2}/32")
            self.gateway.upsert_peer(key, allowed_ips=[address], now=NOW)
            grants[key] = ["r0", *rng.sample(others, GRANTS_PER_PEER - 1)]
        self.client.upsert_peer(
            public_key(gateway_key),
            allowed_ips=[ipaddress.ip_network("0.0.0.0/0")],
            endpoint=B_ENDPOINT,
            now=NOW,
        )
        self._handshake()
        self.rings = CryptoRings(
            from_udp=Ring.create("udp_to_crypto", slot_size=DATAGRAM_SLOT),
            to_udp=Ring.create("crypto_to_udp", slot_size=DATAGRAM_SLOT),
            from_workers=[
                Ring.create(f"worker{i}_to_crypto", slot_size=INNER_SLOT) for i in (0, 1)
            ],
            to_workers=[Ring.create(f"crypto_to_worker{i}", slot_size=INNER_SLOT) for i in (0, 1)],
        )
        counters = memoryview(bytearray(8 * st.PROCESS_BLOCK_WORDS)).cast("Q")
        raw = memoryview(bytearray(8 * st.PEER_SLOT_WORDS * peers))
        firewall = None
        if policy:
            own = [IPv4Address("100.64.0.1")]
            firewall = Firewall(Policy(resources(), grants, own_addresses=own), self.gateway)
        self.loop = CryptoLoop(
            self.gateway,
            self.rings,
            counters,
            st.PeerTable(raw.cast("Q"), raw, peers),
            firewall=firewall,
        )
        self.loop.turn(NOW)  # the first stats copy (every peer is new) is not per packet
        self.header = encode_endpoint(A_ENDPOINT)

    def _handshake(self) -> None:
        first = build.tcp_packet(CLIENT, RESOURCE, 40000, 5432, b"").data
        self.client.handle_packet(first, NOW)  # staged; starts the handshake
        Wire(self.client, self.gateway, NOW).pump()  # the client at A, the gateway at B

    def datagrams(self, count: int) -> list[bytes]:
        """`count` ring messages from the UDP process: header + a tunnel datagram each."""
        packet = build.tcp_packet(CLIENT, RESOURCE, 40000, 5432, PAYLOAD).data
        found = []
        for _ in range(count):
            sent = self.client.handle_packet(packet, NOW)
            assert sent is not None
            found.append(self.header + bytes(sent[1]))
        return found

    def close(self) -> None:
        rings = self.rings
        for ring in (rings.from_udp, rings.to_udp, *rings.from_workers, *rings.to_workers):
            ring.close()


def drain(ring: Ring) -> int:
    taken = len(ring.recv_many(ring.slots))
    ring.release()
    return taken


def decrypt_rounds(bench: Bench, rounds: int) -> Callable[[], float]:
    """A round: BATCH datagrams into the UDP ring, one turn, CPU ns of the turn."""
    messages = bench.datagrams(rounds * BATCH)
    batches = iter([messages[i : i + BATCH] for i in range(0, len(messages), BATCH)])
    from_udp, to_workers, turn = bench.rings.from_udp, bench.rings.to_workers, bench.loop.turn

    def one() -> float:
        from_udp.send_many(next(batches))
        start = time.process_time_ns()
        turn(NOW)
        spent = time.process_time_ns() - start
        delivered = sum(drain(ring) for ring in to_workers)
        assert delivered == BATCH, delivered
        return spent

    return one


def encrypt_rounds(bench: Bench, rounds: int) -> Callable[[], float]:
    """A round: BATCH answers (resource -> client) into worker 0's ring, one turn."""
    del rounds  # the same plaintext every round; the session's counter moves on
    answer = build.tcp_packet(RESOURCE, CLIENT, 5432, 40000, PAYLOAD).data
    batch = [answer] * BATCH
    from_worker, to_udp, turn = bench.rings.from_workers[0], bench.rings.to_udp, bench.loop.turn

    def one() -> float:
        from_worker.send_many(batch)
        start = time.process_time_ns()
        turn(NOW)
        spent = time.process_time_ns() - start
        sent = drain(to_udp)
        assert sent == BATCH, sent
        return spent

    return one


def timed_hop(
    source: Ring,
    sink: Ring,
    batch: list[bytes],
    work: Callable[[list[memoryview]], list[bytearray]],
) -> Callable[[], float]:
    """A round of a floor case: `batch` into `source`; timed: take it, `work` on the whole
    batch (one call), the results into `sink`."""

    def one() -> float:
        source.send_many(batch)
        begin = time.process_time_ns()
        results = work(source.recv_many(BATCH))
        source.release()
        sink.send_many(results)
        spent = time.process_time_ns() - begin
        assert drain(sink) == BATCH
        return spent

    return one


def decrypt_floor(bench: Bench, rounds: int) -> Callable[[], float]:
    """The least any Python loop between these rings does per datagram: take the batch,
    one AEAD decrypt into a new buffer each, hand them on. No header, session, replay,
    routing or flow work: what is left when the protocol costs nothing."""
    del rounds
    aead, nonce = ChaCha20Poly1305(bytes(32)), bytes(12)
    start = HEADER_SIZE + 16  # the endpoint header, then the transport header

    def work(messages: list[memoryview]) -> list[bytearray]:
        packets = []
        for message in messages:
            out = bytearray(len(message) - start - 16)
            aead.decrypt_into(nonce, message[start:], None, out)
            packets.append(out)
        return packets

    sealed = bench.header + bytes(16) + aead.encrypt(nonce, bytes(1280), None)
    return timed_hop(bench.rings.from_udp, bench.rings.to_workers[0], [sealed] * BATCH, work)


def encrypt_floor(bench: Bench, rounds: int) -> Callable[[], float]:
    """The same for the other direction: one AEAD encrypt per packet, into a buffer that
    has room for the headers in front."""
    del rounds
    aead, nonce = ChaCha20Poly1305(bytes(32)), bytes(12)
    start = HEADER_SIZE + 16

    def work(packets: list[memoryview]) -> list[bytearray]:
        datagrams = []
        for packet in packets:
            out = bytearray(start + len(packet) + 16)
            aead.encrypt_into(nonce, packet, None, memoryview(out)[start:])
            datagrams.append(out)
        return datagrams

    return timed_hop(bench.rings.from_workers[0], bench.rings.to_udp, [bytes(1280)] * BATCH, work)


CASES: dict[str, Callable[[Bench, int], Callable[[], float]]] = {
    "decrypt": decrypt_rounds,
    "encrypt": encrypt_rounds,
    "decrypt floor": decrypt_floor,
    "encrypt floor": encrypt_floor,
}
FLOORS = frozenset({"decrypt floor", "encrypt floor"})  # no loop: the policy is not involved


def variants(case: str) -> tuple[bool, ...]:
    """Policy off and on; the floors once."""
    return (False,) if case in FLOORS else (False, True)


def label(case: str, policy: bool) -> str:
    return case if case in FLOORS else f"{case}, policy {'on' if policy else 'off'}"


def measure(
    case: str,
    peers: int,
    rounds: int,
    *,
    policy: bool,
    profile: bool,
    backend: str = tr.BACKEND,
) -> float:
    """Median CPU µs per packet of the case's turns (or 0.0 after printing a profile)."""
    bench = Bench(peers, policy=policy, backend=backend)
    try:
        one = CASES[case](bench, rounds)
        one()  # warm: the first turn of a direction sets up caches
        if profile:
            profiler = cProfile.Profile()
            profiler.runcall(lambda: [one() for _ in range(rounds - 1)])
            print(f"--- {label(case, policy)}, {peers} peers")
            pstats.Stats(profiler).sort_stats("tottime").print_stats(14)
            return 0.0
        return statistics.median(one() for _ in range(rounds - 1)) / BATCH / 1000
    finally:
        bench.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_crypto_loop")
    parser.add_argument("--rounds", type=int, default=300, help="turns of 100 packets per case")
    parser.add_argument("--repeats", type=int, default=3, help="runs of every case, alternated")
    parser.add_argument("--peers", type=int, default=1000)
    parser.add_argument("--profile", action="store_true", help="cProfile instead of timing")
    parser.add_argument(
        "--backend",
        choices=["native", "python", "device"],
        default=tr.BACKEND,
        help="the transport's batches (native, python) or every packet through the Device",
    )
    args = parser.parse_args()
    backend: str = args.backend
    print(f"per-packet path: {backend}")
    if args.profile:
        for case in CASES:
            for policy in variants(case):
                measure(case, args.peers, args.rounds, policy=policy, profile=True, backend=backend)
        return
    samples: dict[str, list[float]] = {}
    for _ in range(args.repeats):  # alternated, so a slow phase of the machine hits all cases
        for case in CASES:
            for policy in variants(case):
                name = label(case, policy)
                value = measure(
                    case, args.peers, args.rounds, policy=policy, profile=False, backend=backend
                )
                samples.setdefault(name, []).append(value)
    # The best run: this VM has slow phases (every case 1.5x slower for a while); the
    # alternation gives each case runs outside them.
    rows = {name: min(values) for name, values in samples.items()}
    width = max(map(len, rows))
    for name, value in rows.items():
        spread = ", ".join(f"{v:.2f}" for v in samples[name])
        print(f"{name:{width}} {value:6.2f} us per packet (CPU, best run; runs: {spread})")
    for case in ("decrypt", "encrypt"):
        off, on = rows[label(case, False)], rows[label(case, True)]
        print(f"{case}: policy adds {on - off:.2f} us per packet ({on / off:.2f}x)")
    RESULTS.parent.mkdir(exist_ok=True)
    document = {
        "backend": backend,
        "peers": args.peers,
        "rounds": args.rounds,
        "batch": BATCH,
        "samples_us": samples,
        "best_us": rows,
    }
    RESULTS.write_text(json.dumps(document, indent=2))


if __name__ == "__main__":
    main()
