"""The one logging setup for the CLI, every child process and tests.

Filters are RUST_LOG-style directives: comma-separated `LEVEL` (everything) or
`LOGGER=LEVEL` (that logger and its children). Built-in defaults come first and silence noisy
libraries; the caller's directives come after and win for the same logger, so `debug` shows
our debug logs without pyroute2's netlink flood and `pyroute2=debug` brings it back.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from typing import Final, TextIO

# Noisy libraries, quiet unless asked for by name. The leading `info` is the level of every
# logger no directive names.
DEFAULT_DIRECTIVES: Final = "info,pyroute2=warning,asyncio=warning"
FORMATS: Final = ("human", "json", "journald")

TRACE: Final = 5
_OFF: Final = logging.CRITICAL + 10
_LEVELS: Final = {
    "trace": TRACE,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
    "off": _OFF,
}
# syslog priorities (sd-daemon(3)) so journald keeps each line's level.
_SYSLOG_PRIORITY: Final = (
    (logging.CRITICAL, 2),
    (logging.ERROR, 3),
    (logging.WARNING, 4),
    (logging.INFO, 6),
)
_SYSLOG_DEBUG: Final = 7

logging.addLevelName(TRACE, "TRACE")


class LogDirectiveError(ValueError):
    """A filter directive that cannot be parsed; `directive` is the offending text."""

    def __init__(self, directive: str, problem: str) -> None:
        self.directive = directive
        super().__init__(f"invalid log directive {directive!r}: {problem}")


@dataclass(frozen=True, slots=True)
class Directive:
    logger: str  # "" is the root logger
    level: int


def parse_directives(text: str) -> tuple[Directive, ...]:
    """Parse `LEVEL` / `LOGGER=LEVEL` entries; empty entries are ignored, as in RUST_LOG."""
    directives = []
    for raw in text.split(","):
        entry = raw.strip()
        if not entry:
            continue
        logger, sep, level_name = entry.rpartition("=")
        logger = logger.strip()
        if sep and not logger:
            raise LogDirectiveError(entry, "empty logger name")
        if any(c.isspace() or c == "=" for c in logger):
            raise LogDirectiveError(entry, "a logger name has no spaces or '='")
        level = _LEVELS.get(level_name.strip().lower())
        if level is None:
            raise LogDirectiveError(
                entry,
                f"unknown level {level_name.strip()!r} (expected one of {', '.join(_LEVELS)})",
            )
        directives.append(Directive(logger, level))
    return tuple(directives)


def effective_levels(filter_text: str) -> dict[str, int]:
    """Logger name → level after the defaults and then `filter_text`; the last entry wins."""
    levels: dict[str, int] = {}
    for directive in (*parse_directives(DEFAULT_DIRECTIVES), *parse_directives(filter_text)):
        levels[directive.logger] = directive.level
    return levels


# Loggers whose level the last setup set, reset on the next setup (tests, SIGHUP reload).
_configured: set[str] = set()
_handler: logging.Handler | None = None


def setup_logging(
    filter: str = "info",
    fmt: str | None = None,
    *,
    stream: TextIO | None = None,
    process: str | None = None,
) -> None:
    """Configure the root logger: levels from `filter`, output in `fmt` to `stream` (stderr).

    `process` (a child's name, e.g. fzgw-tun0) goes into every line: children share the
    supervisor's stderr, so the journal attributes all their lines to the supervisor.

    `fmt` None picks `journald` when stderr is the journal stream systemd gave us
    (JOURNAL_STREAM), `human` otherwise. Raises LogDirectiveError before changing anything
    when `filter` is invalid and ValueError for an unknown format. Safe to call again.
    """
    global _handler  # noqa: PLW0603 - one process-wide handler, replaced on re-setup
    levels = effective_levels(filter)
    out = stream if stream is not None else sys.stderr
    chosen = fmt if fmt is not None else ("journald" if _is_journal_stream(out) else "human")
    if chosen not in FORMATS:
        raise ValueError(f"unknown log format {chosen!r} (expected one of {', '.join(FORMATS)})")

    root = logging.getLogger()
    for name in _configured - levels.keys():
        logging.getLogger(name).setLevel(logging.NOTSET)
    for name, level in levels.items():
        logging.getLogger(name or None).setLevel(level)
    _configured.clear()
    _configured.update(name for name in levels if name)

    handler = logging.StreamHandler(out)
    handler.setFormatter(_FORMATTERS[chosen](process))
    if _handler is not None:
        root.removeHandler(_handler)
    root.addHandler(handler)
    _handler = handler
    logging.captureWarnings(True)


def logger_for_test(name: str, filter: str = "debug") -> logging.Logger:
    """A logger for a test: sets up logging (human format to stderr) and returns the logger."""
    setup_logging(filter, "human")
    return logging.getLogger(name)


def _is_journal_stream(stream: TextIO) -> bool:
    """True when `stream` is the journal socket systemd named in JOURNAL_STREAM (dev:inode)."""
    expected = os.environ.get("JOURNAL_STREAM")
    if not expected:
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError):  # no real file descriptor behind the stream
        return False
    return expected == f"{st.st_dev}:{st.st_ino}"


def _utc_time(record: logging.LogRecord) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{seconds}.{int(record.msecs):03d}Z"


def _process_prefix(process: str | None) -> str:
    return "" if process is None else process.replace("%", "%%") + " "


class _HumanFormatter(logging.Formatter):
    def __init__(self, process: str | None = None) -> None:
        prefix = _process_prefix(process)
        super().__init__(f"%(asctime)s %(levelname)-5s {prefix}%(name)s: %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return _utc_time(record)


class _JournaldFormatter(logging.Formatter):
    """No timestamp (journald adds one); each line gets the `<N>` priority prefix."""

    def __init__(self, process: str | None = None) -> None:
        super().__init__(f"{_process_prefix(process)}%(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        priority = next(
            (prio for level, prio in _SYSLOG_PRIORITY if record.levelno >= level), _SYSLOG_DEBUG
        )
        return "\n".join(f"<{priority}>{line}" for line in super().format(record).splitlines())


class _JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def __init__(self, process: str | None = None) -> None:
        super().__init__()
        self.process_name = process

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": _utc_time(record),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            "pid": record.process,
        }
        if self.process_name is not None:
            entry["process"] = self.process_name
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


_FORMATTERS: Final[dict[str, type[_HumanFormatter | _JournaldFormatter | _JsonFormatter]]] = {
    "human": _HumanFormatter,
    "journald": _JournaldFormatter,
    "json": _JsonFormatter,
}
