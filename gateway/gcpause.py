"""Building large long-lived structures (a 100,000-peer config or Device) without the cycle
collector.

Each collection of the oldest generation walks every tracked object. While hundreds of
thousands of objects are being created, the collector runs again and again over all that
were made before, which made start-up several times slower than the work itself. The
structures built here hold no garbage cycles, so nothing is lost by pausing it.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def gc_paused(*, freeze: bool = False) -> Iterator[None]:
    """Pause the cyclic garbage collector for the block (as it was before, after it). With
    `freeze`, everything alive afterwards moves to the permanent generation, so later
    collections skip it: for what lives as long as the process (the crypto process's Device).
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if freeze:
            gc.freeze()
        if enabled:
            gc.enable()
