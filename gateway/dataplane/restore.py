"""Applying a saved run-time state (runstate.py) entry by entry: a bad entry costs only itself.

Entries: the interface's lines (private key, fwmark, replace_peers), then one per peer, from
its `public_key=` line to the next. Each is parsed and applied on its own; one that fails is
logged, naming the peer by its public key (never a key value or a line of the state), and
left out. Before an entry is applied its number is marked in the saved state. A process that
dies there (a crash no handler sees) leaves the mark behind: its successor drops that entry
from the saved state for good, logs it, and restores the rest, so a poisoned entry costs one
crash instead of a crash loop. The caller saves the state as restored afterwards (which
clears the mark), so entries left out are not tried again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from gateway.dataplane.runstate import RunState
from gateway.keys import encode_key
from gateway.uapi import SetRequest, UapiError
from gateway.uapi.codec import SetParser, parse_key

log = logging.getLogger(__name__)

Entry = list[str]


def split_entries(text: str) -> list[Entry]:
    """The interface's lines, then one list of lines per peer."""
    entries: list[Entry] = [[]]
    for line in text.splitlines():
        if line.startswith("public_key="):
            entries.append([])
        entries[-1].append(line)
    return entries


def join_entries(entries: list[Entry]) -> str:
    return "".join(line + "\n" for entry in entries for line in entry)


def describe(entry: Entry) -> str:
    """What an entry configures, for a log line: the peer's public key or the interface."""
    if not entry or not entry[0].startswith("public_key="):
        return "the interface (private key, fwmark)"
    try:
        return f"peer {encode_key(parse_key(entry[0].partition('=')[2], 'public_key'))}"
    except UapiError:
        return "a peer with a malformed public key"


def parse_entry(entry: Entry) -> SetRequest:
    """One entry as a set request; UapiError names the line's key, never its value."""
    parser = SetParser()
    for line in entry:
        try:
            parser.line(line)
        except UapiError as exc:
            raise UapiError(exc.errno, f"bad {line.partition('=')[0][:40]!r} line") from None
    return parser.finish()


def restore(apply: Callable[[SetRequest], int], runstate: RunState) -> int | None:
    """Apply the saved state through `apply` (returns 0 or a negative errno); the number of
    entries restored, or None when there was no saved state."""
    text = runstate.load()
    if text is None:
        return None
    entries = split_entries(text)
    crashed = runstate.restoring()
    if 0 < crashed <= len(entries):
        dropped = entries.pop(crashed - 1)
        log.error(
            "run-time state not restored for %s: restoring it ended the previous crypto "
            "process; it is left out for good",
            describe(dropped),
        )
        runstate.save(join_entries(entries))
    restored = 0
    for number, entry in enumerate(entries, start=1):
        if not entry:
            continue
        runstate.mark_restoring(number)
        try:
            error = apply(parse_entry(entry))
            reason = f"refused (errno {error})"
        except UapiError as exc:
            error, reason = exc.errno, str(exc)
        except Exception as exc:  # noqa: BLE001 - a saved entry never stops the restore
            error, reason = -1, f"{type(exc).__name__}: {exc}"
        if error:
            log.error("run-time state not restored for %s: %s", describe(entry), reason)
        else:
            restored += 1
    runstate.mark_restoring(0)
    return restored
