from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.wireguard.replay import (
    COUNTER_BITS_TOTAL,
    COUNTER_WINDOW_SIZE,
    REJECT_AFTER_MESSAGES,
    ReplayFilter,
)

W = COUNTER_WINDOW_SIZE
LIM = W + 1  # the kernel selftest's T_LIM
REJ = REJECT_AFTER_MESSAGES


def test_window_sizes_match_the_kernel_and_wireguard_go() -> None:
    assert COUNTER_BITS_TOTAL == 8192
    assert COUNTER_WINDOW_SIZE == 8128
    assert REJECT_AFTER_MESSAGES == 0xFFFFFFFFFFFFDFFF


# drivers/net/wireguard/selftest/counter.c, first block: (counter, accepted) in order.
KERNEL_VECTORS = [
    (0, True), (1, True), (1, False), (9, True), (8, True), (7, True), (7, False),
    (LIM, True), (LIM - 1, True), (LIM - 1, False), (LIM - 2, True), (2, True), (2, False),
    (LIM + 16, True), (3, False), (LIM + 16, False), (LIM * 4, True),
    (LIM * 4 - (LIM - 1), True), (10, False), (LIM * 4 - LIM, False),
    (LIM * 4 - (LIM + 1), False), (LIM * 4 - (LIM - 2), True), (LIM * 4 + 1 - LIM, False),
    (0, False), (REJ, False), (REJ - 1, True), (REJ, False), (REJ - 1, False), (REJ - 2, True),
    (REJ + 1, False), (REJ + 2, False), (REJ - 2, False), (REJ - 3, True), (0, False),
]  # fmt: skip


def test_kernel_selftest_vectors() -> None:
    f = ReplayFilter()
    results = [(n, f.validate(n)) for n, _ in KERNEL_VECTORS]
    assert results == KERNEL_VECTORS


def test_kernel_selftest_full_window_ascending() -> None:
    f = ReplayFilter()
    assert all(f.validate(i) for i in range(1, W + 1))
    assert f.validate(0)
    assert not f.validate(0)

    f = ReplayFilter()
    assert all(f.validate(i) for i in range(2, W + 2))
    assert f.validate(1)
    assert not f.validate(0)


def test_kernel_selftest_full_window_descending() -> None:
    f = ReplayFilter()
    assert all(f.validate(i) for i in range(W, -1, -1))

    f = ReplayFilter()
    assert all(f.validate(i) for i in range(W + 1, 0, -1))
    assert not f.validate(0)

    f = ReplayFilter()
    assert all(f.validate(i) for i in range(W, 0, -1))
    assert f.validate(W + 1)
    assert not f.validate(0)

    f = ReplayFilter()
    assert all(f.validate(i) for i in range(W, 0, -1))
    assert f.validate(0)
    assert f.validate(W + 1)


def test_reset_forgets() -> None:
    f = ReplayFilter()
    assert f.validate(5)
    assert f.validate(100_000)
    f.reset()
    assert f.validate(5)
    assert f.validate(0)


def test_negative_counter_rejected() -> None:
    assert not ReplayFilter().validate(-1)


class Model:
    """Brute force: remember every counter; accept within the window, once."""

    def __init__(self) -> None:
        self.seen: set[int] = set()
        self.highest = -1

    def validate(self, counter: int) -> bool:
        if counter >= REJ or counter in self.seen or self.highest - counter > W:
            return False
        self.seen.add(counter)
        self.highest = max(self.highest, counter)
        return True


# Steps relative to the highest counter so far: in order, reordered, far ahead, far behind,
# right at the window edge, and absolute values near the limit.
_steps = st.one_of(
    st.tuples(st.just("rel"), st.integers(-W - 70, 70)),
    st.tuples(st.just("rel"), st.sampled_from([-W - 1, -W, -W + 1, 64, 8192, 8193, 10**6])),
    st.tuples(st.just("abs"), st.integers(0, 3 * COUNTER_BITS_TOTAL)),
    st.tuples(st.just("abs"), st.integers(REJ - 3 * COUNTER_BITS_TOTAL, REJ + 3)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_steps, max_size=200))
def test_matches_model(steps: list[tuple[str, int]]) -> None:
    f = ReplayFilter()
    model = Model()
    for kind, value in steps:
        counter = value if kind == "abs" else max(0, model.highest + value)
        assert f.validate(counter) == model.validate(counter), (kind, value, counter)
