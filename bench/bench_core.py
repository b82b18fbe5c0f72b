"""Benchmark of the sans-I/O WireGuard core: handshakes/s, encrypt/decrypt of 1280-byte packets.

Run: `.venv/bin/python -m bench.bench_core`. Prints medians and writes bench/results/core.json.
The per-packet figures are split into the AEAD alone (the same cipher call on a preallocated
buffer) and our own overhead (routing, header, counters, timers, replay, anti-spoofing).
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from nacl import bindings

from testbed.wire import A_ENDPOINT, A_INNER, B_INNER, ipv4_packet, make_wire

REPEATS = 7
PACKETS = 2000
SIZE = 1280


def median_ns(fn: Callable[[], int]) -> float:
    """Median ns per operation over REPEATS runs of `fn` (which returns its operation count)."""
    samples = []
    for _ in range(REPEATS):
        start = time.perf_counter_ns()
        count = fn()
        samples.append((time.perf_counter_ns() - start) / count)
    return statistics.median(samples)


def bench_handshake() -> float:
    def run() -> int:
        n = 20
        for _ in range(n):
            wire = make_wire()
            wire.a.handle_packet(ipv4_packet(A_INNER, B_INNER), wire.now)
            wire.pump()
        return n

    return median_ns(run)


def bench_data_path() -> dict[str, float]:
    wire = make_wire()
    assert wire.send_a_to_b() is not None
    packet = ipv4_packet(A_INNER, B_INNER, b"p" * (SIZE - 20))
    a, b = wire.a, wire.b
    now = wire.now

    def encrypt() -> int:
        for _ in range(PACKETS):
            a.handle_packet(packet, now)
        return PACKETS

    datagrams = [out[1] for _ in range(PACKETS * REPEATS) if (out := a.handle_packet(packet, now))]
    it = iter(datagrams)

    def decrypt() -> int:
        for _ in range(PACKETS):
            assert b.handle_datagram(next(it), A_ENDPOINT, now) is not None
        return PACKETS

    key, nonce = os.urandom(32), bytes(12)
    aead = ChaCha20Poly1305(key)
    buf = bytearray(SIZE + 16)
    sealed = aead.encrypt(nonce, packet, None)
    plain = bytearray(SIZE)

    def aead_encrypt_into() -> int:
        for _ in range(PACKETS):
            aead.encrypt_into(nonce, packet, None, buf)
        return PACKETS

    def aead_decrypt_into() -> int:
        for _ in range(PACKETS):
            aead.decrypt_into(nonce, sealed, None, plain)
        return PACKETS

    def aead_encrypt_bytes() -> int:
        for _ in range(PACKETS):
            aead.encrypt(nonce, packet, None)
        return PACKETS

    def nacl_encrypt() -> int:
        for _ in range(PACKETS):
            bindings.crypto_aead_chacha20poly1305_ietf_encrypt(packet, None, nonce, key)
        return PACKETS

    def nacl_decrypt() -> int:
        for _ in range(PACKETS):
            bindings.crypto_aead_chacha20poly1305_ietf_decrypt(sealed, None, nonce, key)
        return PACKETS

    return {
        "core_encrypt_ns": median_ns(encrypt),
        "core_decrypt_ns": median_ns(decrypt),
        "aead_encrypt_into_ns": median_ns(aead_encrypt_into),
        "aead_decrypt_into_ns": median_ns(aead_decrypt_into),
        "aead_encrypt_bytes_ns": median_ns(aead_encrypt_bytes),
        "nacl_encrypt_ns": median_ns(nacl_encrypt),
        "nacl_decrypt_ns": median_ns(nacl_decrypt),
    }


def main() -> None:
    results = bench_data_path()
    results["handshake_ns"] = bench_handshake()
    enc, dec = results["core_encrypt_ns"], results["core_decrypt_ns"]
    rows = [
        ("2 new devices + full handshake + keepalive", results["handshake_ns"],
         1e9 / results["handshake_ns"], "handshakes/s"),
        (f"core encrypt {SIZE} B (handle_packet)", enc, 1e9 / enc, "packets/s"),
        ("  of which AEAD encrypt_into", results["aead_encrypt_into_ns"], None, ""),
        ("  of which our overhead", enc - results["aead_encrypt_into_ns"], None, ""),
        (f"core decrypt {SIZE} B (handle_datagram)", dec, 1e9 / dec, "packets/s"),
        ("  of which AEAD decrypt_into", results["aead_decrypt_into_ns"], None, ""),
        ("  of which our overhead", dec - results["aead_decrypt_into_ns"], None, ""),
        ("cryptography encrypt (bytes out)", results["aead_encrypt_bytes_ns"], None, ""),
        ("pynacl ietf encrypt", results["nacl_encrypt_ns"], None, ""),
        ("pynacl ietf decrypt", results["nacl_decrypt_ns"], None, ""),
    ]  # fmt: skip
    print(f"{'operation (median of ' + str(REPEATS) + ')':50} {'ns/op':>10} {'rate':>12}")
    for name, ns, rate, unit in rows:
        rate_text = f"{rate:,.0f} {unit}" if rate else ""
        print(f"{name:50} {ns:10,.0f} {rate_text:>12}")
    ratio = results["nacl_encrypt_ns"] / results["aead_encrypt_into_ns"]
    print(f"pynacl / cryptography encrypt_into: {ratio:.2f}x")
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "core.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
