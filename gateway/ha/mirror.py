"""The standby's copy of the active's state, built from the channel's batches (sans-I/O).

A resync (after every (re)join) names the whole state and ends with ResyncDone; whatever the
mirror held that the resync did not name is removed then. Incremental changes replace or
remove one piece each. `lag` is how old the last batch was when it came (the two hosts'
wall clocks, so as good as their NTP), `last_sync` when the last resync completed.
"""

from __future__ import annotations

from typing import Any

from gateway.ha.codec import (
    Batch,
    Change,
    DnsMapping,
    HandshakeTimestamp,
    NatEntry,
    NatGone,
    PeerEndpoint,
    ResyncDone,
    Session,
    SessionGone,
)

TAKEOVER_JUMP = 1 << 32  # send counters skipped on takeover, see `takeover_limit`


class Mirror:
    def __init__(self) -> None:
        self.state: dict[Any, Change] = {}
        self._seen: set[Any] | None = None  # keys named since a resync began
        self.lag = 0.0
        self.last_batch: float | None = None  # wall clock
        self.last_sync: float | None = None
        self.applied = 0

    def begin_resync(self) -> None:
        """A new connection: the next resync replaces everything."""
        self._seen = set()

    def apply(self, batch: Batch, wall: float) -> list[Change]:
        """Apply a batch; the changes it made (for the process to pass on)."""
        self.lag = max(0.0, wall - batch.sent_at)
        self.last_batch = wall
        done: list[Change] = []
        for change in batch.changes:
            if isinstance(change, ResyncDone):
                if self._seen is not None:
                    for key in [k for k in self.state if k not in self._seen]:
                        del self.state[key]
                self._seen = None
                self.last_sync = wall
                done.append(change)
                continue
            key = change.key()
            if self._seen is not None:
                self._seen.add(key)
            if isinstance(change, SessionGone | NatGone):
                self.state.pop(key, None)
            else:
                self.state[key] = change
            self.applied += 1
            done.append(change)
        return done

    def sessions(self) -> list[Session]:
        return [c for c in self.state.values() if isinstance(c, Session)]

    def endpoints(self) -> list[PeerEndpoint]:
        return [c for c in self.state.values() if isinstance(c, PeerEndpoint)]

    def timestamps(self) -> list[HandshakeTimestamp]:
        return [c for c in self.state.values() if isinstance(c, HandshakeTimestamp)]

    def nat_entries(self) -> list[NatEntry]:
        return [c for c in self.state.values() if isinstance(c, NatEntry)]

    def dns_mappings(self) -> list[DnsMapping]:
        return [c for c in self.state.values() if isinstance(c, DnsMapping)]


def takeover_limit(send_limit: int, reject_after: int) -> int:
    """Where a node that takes a session over starts its send counters.

    The active persists (and replicates) the end of each block of counters before using it,
    but the last reservations may not have reached us when it died: start TAKEOVER_JUMP
    past the last end we know, as strongSwan's HA plugin jumps ESP sequence numbers. A
    keypair lives at most 180 s (REJECT_AFTER_TIME); sending 2**32 packets in that time
    would take 24 million packets a second, so a node still running (split brain) cannot
    reach the counters the taker uses: the two ranges are disjoint.
    """
    return min(reject_after, send_limit + TAKEOVER_JUMP)
