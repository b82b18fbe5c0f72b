"""Coverage-guided fuzzing of the transport through its Python API (atheris), native
against the pure-Python fallback: every input is a batch of UDP ring messages (raw, or
sealed with a real session key so the inner checks are reached, and mutated) and a batch
of TUN packets; both backends must produce the same bytes, drops and figures, and neither
may raise.

    python tests/atheris_transport.py -runs=1000000   (make fuzz)
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: testbed/

with atheris.instrument_imports():
    from gateway.dataplane import transport_py  # noqa: F401 - instrumented for coverage
    from testbed import transport_cases as tc

RAW, SEALED, FLIPPED = 0, 1, 2


def messages(fdp: atheris.FuzzedDataProvider) -> list[bytes]:
    clients = tc.client_transport()
    out = []
    for _ in range(fdp.ConsumeIntInRange(0, 24)):
        kind = fdp.ConsumeIntInRange(RAW, FLIPPED + 1)
        body = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 1400))
        if kind == RAW:
            out.append(body)
            continue
        peer = fdp.ConsumeIntInRange(1, tc.SESSIONS)
        try:
            datagram = tc.seal(clients, peer, body)
        except ValueError:
            continue
        message = bytearray(tc.CLIENT_ENDPOINT + datagram)
        if kind == FLIPPED and message:  # flip one byte anywhere
            message[fdp.ConsumeIntInRange(0, len(message) - 1)] ^= fdp.ConsumeIntInRange(1, 255)
        if message:
            out.append(bytes(message))
    return [m for m in out if m]


def one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    now = tc.CREATED + fdp.ConsumeIntInRange(-2, 200)
    workers = fdp.ConsumeIntInRange(1, 3)
    limit = fdp.ConsumeIntInRange(1, 64)
    packets = fdp.ConsumeBool()
    batch = messages(fdp)
    native, python = (
        tc.run_inbound(
            tc.gateway_transport(backend),
            batch,
            now=now,
            workers=workers,
            limit=limit,
            packets=packets,
        )
        for backend in ("native", "python")
    )
    if native != python:
        raise AssertionError(f"inbound differs:\n native {native}\n python {python}")
    tun = [
        fdp.ConsumeBytes(fdp.ConsumeIntInRange(1, 1300)) for _ in range(fdp.ConsumeIntInRange(0, 8))
    ]
    tun = [p for p in tun if p]
    mtu = fdp.ConsumeIntInRange(0, 1500)
    native, python = (
        tc.run_outbound(tc.gateway_transport(backend), tun, now=now, mtu=mtu, limit=limit)
        for backend in ("native", "python")
    )
    if native != python:
        raise AssertionError(f"outbound differs:\n native {native}\n python {python}")


if __name__ == "__main__":
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
