"""bench_crypto_loop's own code: every case runs a few turns and times them (no network)."""

from __future__ import annotations

import pytest

from bench.bench_crypto_loop import CASES, measure, variants


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_case_moves_its_batches_and_reports_a_time(case: str) -> None:
    # measure() asserts inside each round that the whole batch came out of the loop
    for policy in variants(case):
        assert measure(case, peers=20, rounds=3, policy=policy, profile=False) > 0
