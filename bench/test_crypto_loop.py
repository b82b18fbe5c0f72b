"""bench_crypto_loop's own code: every case runs a few turns and times them (no network)."""

from __future__ import annotations

import pytest

from bench.bench_crypto_loop import CASES, measure, variants
from gateway.dataplane import transport as tr


@pytest.mark.parametrize("backend", ["native", "python", "device"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_every_case_moves_its_batches_and_reports_a_time(case: str, backend: str) -> None:
    # measure() asserts inside each round that the whole batch came out of the loop
    if backend == "native" and tr.BACKEND != "native":
        try:
            from gateway import _native  # noqa: F401, PLC0415 - probing
        except ImportError:
            pytest.skip("the native extension is not built")
    for policy in variants(case):
        assert measure(case, peers=20, rounds=3, policy=policy, profile=False, backend=backend) > 0
