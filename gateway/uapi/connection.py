"""One client connection of the userspace API, sans I/O: bytes in, events out."""

from __future__ import annotations

from gateway.uapi.codec import SetParser
from gateway.uapi.types import (
    ERR_INVALID,
    ERR_IO,
    CloseConnection,
    Event,
    GetRequest,
    RequestFailed,
    UapiError,
)

MAX_LINE_BYTES = 4096
MAX_REQUEST_BYTES = 32 << 20  # ~1M allowed IPs; wireguard-go has no limit
READ_AHEAD_BYTES = 256 << 10  # unparsed input kept per connection before reading pauses

# ---- one connection, sans I/O ----


class UapiConnection:
    """Turns a client's bytes into events, one request at a time.

    Feed bytes with `feed()`; pull events with `next_event()` until it returns None. The
    caller should stop reading from the socket while `wants_input` is False (the unparsed
    input is bounded by READ_AHEAD_BYTES) and while it still has a reply to write.
    """

    def __init__(
        self, *, max_line_bytes: int = MAX_LINE_BYTES, max_request_bytes: int = MAX_REQUEST_BYTES
    ) -> None:
        self._buf = bytearray()
        self._max_line = max_line_bytes
        self._max_request = max_request_bytes
        self._mode = "op"  # op | get | set | skip (rest of a failed set) | closed
        self._set: SetParser | None = None
        self._request_bytes = 0
        self._eof = False

    @property
    def wants_input(self) -> bool:
        return not self._eof and self._mode != "closed" and len(self._buf) < READ_AHEAD_BYTES

    @property
    def closed(self) -> bool:
        return self._mode == "closed"

    def feed(self, data: bytes) -> None:
        if self._mode != "closed":
            self._buf += data

    def feed_eof(self) -> None:
        self._eof = True

    def next_event(self) -> Event | None:
        while self._mode != "closed":
            newline = self._buf.find(b"\n")
            if newline < 0:
                return self._on_partial_line()
            raw = bytes(self._buf[:newline])
            del self._buf[: newline + 1]
            event = self._on_line(raw)
            if event is not None:
                return event
        return None

    def _on_partial_line(self) -> Event | None:
        if len(self._buf) > self._max_line:
            return self._fail_and_close(ERR_IO, "line too long")
        if not self._eof:
            return None
        if self._mode == "set" and self._set is not None and not self._buf:
            # wireguard-go applies a set request cut off by EOF as far as it got
            request = self._set.finish()
            self._mode = "closed"
            return request
        self._mode = "closed"
        return CloseConnection("end of input")

    def _on_line(self, raw: bytes) -> Event | None:
        if len(raw) > self._max_line:
            return self._fail_and_close(ERR_IO, "line too long")
        try:
            line = raw.decode()
        except UnicodeDecodeError:
            line = raw.decode(errors="replace")
        match self._mode:
            case "op":
                return self._on_operation(line)
            case "get":
                self._mode = "op"
                if line:
                    return RequestFailed(ERR_INVALID, "trailing characters after get=1")
                return GetRequest()
            case "skip":
                if not line:
                    self._mode = "op"
                return None
            case _:
                return self._on_set_line(line, len(raw) + 1)

    def _on_operation(self, line: str) -> Event | None:
        if line == "get=1":
            self._mode = "get"
            return None
        if line == "set=1":
            self._mode = "set"
            self._set = SetParser()
            self._request_bytes = 0
            return None
        self._mode = "closed"
        operation = line.partition("=")[0][:80]  # never the value: it could be a key
        return CloseConnection(f"invalid UAPI operation: {operation!r}")

    def _on_set_line(self, line: str, size: int) -> Event | None:
        if self._set is None:
            raise RuntimeError("set line without a parser")
        if not line:
            request = self._set.finish()
            self._set = None
            self._mode = "op"
            return request
        self._request_bytes += size
        if self._request_bytes > self._max_request:
            return self._fail_and_close(ERR_IO, "set request too large")
        try:
            self._set.line(line)
        except UapiError as err:
            self._set = None
            self._mode = "skip"
            return RequestFailed(err.errno, str(err))
        return None

    def _fail_and_close(self, errno: int, reason: str) -> Event:
        self._mode = "closed"
        self._buf.clear()
        return RequestFailed(errno, reason)
