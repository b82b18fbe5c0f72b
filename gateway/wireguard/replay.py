"""Sliding-window replay filter for transport-data counters (RFC 6479).

The same window as the kernel's `counter_validate` and wireguard-go's `replay.go`: a ring of
128 words of 64 bits (8192 bits); one word is always being recycled, so 8128 counters behind
the highest one seen are usable. Call `validate` only after the packet authenticated.

A filter may keep its window in `storage` (STORAGE_WORDS unsigned 64-bit words: the highest
counter, then the ring), e.g. a session's record in shared memory that a restarted process
maps again (gateway/wireguard/sessions.py): `validate` writes through, so the window a
successor finds is the one the last accepted packet left.
"""

from __future__ import annotations

from gateway.wireguard.constants import REJECT_AFTER_MESSAGES

WORD_BITS = 64
COUNTER_BITS_TOTAL = 8192
COUNTER_WINDOW_SIZE = COUNTER_BITS_TOTAL - WORD_BITS  # 8128

_WORDS = COUNTER_BITS_TOTAL // WORD_BITS
_WORD_SHIFT = WORD_BITS.bit_length() - 1  # log2(64)
_BIT_MASK = WORD_BITS - 1
_RING_MASK = _WORDS - 1
_EMPTY_RING = (0,) * _WORDS
STORAGE_WORDS = 1 + _WORDS  # the highest counter, then the ring


class ReplayFilter:
    """Accepts each counter below REJECT_AFTER_MESSAGES at most once, within the window."""

    __slots__ = ("_highest", "_store", "_words")

    def __init__(self, storage: memoryview | None = None) -> None:
        """A fresh window, or the one kept in `storage` (a memoryview of format "Q" and
        STORAGE_WORDS items) as it is."""
        self._store = storage
        if storage is None:
            self._highest = 0
            self._words: list[int] | memoryview = [0] * _WORDS
        else:
            if storage.format != "Q" or len(storage) != STORAGE_WORDS:
                raise ValueError(f"replay storage must be {STORAGE_WORDS} 'Q' words")
            self._highest = storage[0]
            self._words = storage[1:]

    def window(self) -> list[int]:
        """The highest counter, then the ring: the STORAGE_WORDS words `storage` holds."""
        return [self._highest, *self._words]

    def reset(self) -> None:
        """Forget everything (a new keypair starts at counter 0)."""
        self._highest = 0
        self._clear()
        if self._store is not None:
            self._store[0] = 0

    def _clear(self) -> None:
        words = self._words
        if isinstance(words, list):
            words[:] = _EMPTY_RING
        else:
            for i in range(_WORDS):
                words[i] = 0

    def validate(self, counter: int) -> bool:
        """True the first time `counter` is seen and it is inside the window; records it."""
        if counter >= REJECT_AFTER_MESSAGES or counter < 0:
            return False
        highest = self._highest
        words = self._words
        word_index = counter >> _WORD_SHIFT
        if counter > highest:
            current = highest >> _WORD_SHIFT
            if word_index != current:
                # Moving into new words: clear the ones the window slides over.
                if word_index - current >= _WORDS:
                    self._clear()
                else:
                    for i in range(current + 1, word_index + 1):
                        words[i & _RING_MASK] = 0
            self._highest = counter
            if self._store is not None:
                self._store[0] = counter
        elif highest - counter > COUNTER_WINDOW_SIZE:
            return False
        slot = word_index & _RING_MASK
        bit = 1 << (counter & _BIT_MASK)
        old = words[slot]
        if old & bit:
            return False
        words[slot] = old | bit
        return True
