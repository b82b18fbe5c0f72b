from __future__ import annotations

import io
import json
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.telemetry.logsetup import (
    Directive,
    LogDirectiveError,
    logger_for_test,
    parse_directives,
    setup_logging,
)

TIMESTAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"


@pytest.fixture(autouse=True)
def reset_logging() -> Iterator[None]:
    yield
    setup_logging("info", "human")


def enabled(logger: str, level: int) -> bool:
    return logging.getLogger(logger).isEnabledFor(level)


def test_parse_directives() -> None:
    assert parse_directives(" debug , pyroute2=WARN,gateway.crypto=trace,,x=off ") == (
        Directive("", logging.DEBUG),
        Directive("pyroute2", logging.WARNING),
        Directive("gateway.crypto", 5),
        Directive("x", logging.CRITICAL + 10),
    )
    assert parse_directives("") == ()


@pytest.mark.parametrize(
    ("text", "bad", "problem"),
    [
        ("debug,loud", "loud", "unknown level 'loud'"),
        ("gateway=verbose", "gateway=verbose", "unknown level 'verbose'"),
        ("info,=debug", "=debug", "empty logger name"),
        ("gateway=", "gateway=", "unknown level ''"),
        ("a=b=debug", "a=b=debug", "a logger name has no spaces or '='"),
        ("my logger=debug", "my logger=debug", "a logger name has no spaces or '='"),
    ],
)
def test_invalid_directive_names_itself(text: str, bad: str, problem: str) -> None:
    with pytest.raises(LogDirectiveError) as info:
        setup_logging(text)
    assert info.value.directive == bad
    assert str(info.value).startswith(f"invalid log directive {bad!r}: {problem}")


def test_invalid_directive_changes_nothing() -> None:
    setup_logging("gateway=debug")
    with pytest.raises(LogDirectiveError):
        setup_logging("gateway=error,nonsense=")
    assert enabled("gateway", logging.DEBUG)


def test_default_silences_pyroute2_under_debug() -> None:
    setup_logging("debug")
    assert enabled("gateway.dataplane", logging.DEBUG)
    assert not enabled("pyroute2.netlink.nlsocket", logging.DEBUG)
    assert not enabled("pyroute2", logging.INFO)
    assert enabled("pyroute2.netlink", logging.WARNING)
    assert not enabled("asyncio", logging.DEBUG)


def test_user_directive_overrides_default() -> None:
    setup_logging("debug,pyroute2=debug")
    assert enabled("pyroute2.netlink.nlsocket", logging.DEBUG)


def test_logger_directive_keeps_others_at_info() -> None:
    setup_logging("gateway.crypto=debug")
    assert enabled("gateway.crypto.handshake", logging.DEBUG)
    assert not enabled("gateway.udp", logging.DEBUG)
    assert enabled("gateway.udp", logging.INFO)


def test_last_directive_wins() -> None:
    setup_logging("gateway=debug,warning,gateway=error")
    assert not enabled("gateway", logging.WARNING)
    assert enabled("gateway", logging.ERROR)
    assert not enabled("other", logging.INFO)
    assert enabled("other", logging.WARNING)


def test_off_silences_a_logger() -> None:
    setup_logging("info,noisy=off")
    assert not enabled("noisy", logging.CRITICAL)


def test_setup_again_resets_earlier_logger_levels() -> None:
    setup_logging("gateway.old=debug")
    setup_logging("info")
    assert logging.getLogger("gateway.old").level == logging.NOTSET
    assert not enabled("gateway.old", logging.DEBUG)


def test_setup_again_replaces_the_handler() -> None:
    first, second = io.StringIO(), io.StringIO()
    setup_logging("info", "human", stream=first)
    setup_logging("info", "human", stream=second)
    logging.getLogger("gateway.t").info("once")
    assert first.getvalue() == ""
    assert second.getvalue().count("once") == 1


def test_human_format() -> None:
    out = io.StringIO()
    setup_logging("debug", "human", stream=out)
    logging.getLogger("gateway.cli").debug("hello %s", "world")
    assert re.fullmatch(rf"{TIMESTAMP} DEBUG gateway\.cli: hello world\n", out.getvalue())


def test_json_format_one_object_per_line() -> None:
    out = io.StringIO()
    setup_logging("info", "json", stream=out)
    log = logging.getLogger("gateway.x")
    log.warning("first\nline")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("failed")
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["level"] == "WARNING"
    assert first["logger"] == "gateway.x"
    assert first["msg"] == "first\nline"
    assert first["pid"] == os.getpid()
    assert re.fullmatch(TIMESTAMP, first["ts"])
    assert second["level"] == "ERROR"
    assert "RuntimeError: boom" in second["exc"]


def journal_stream(tmp_path: Path) -> io.TextIOWrapper:
    return (tmp_path / "journal").open("w+", encoding="utf-8")


def test_journald_format_when_stderr_is_the_journal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with journal_stream(tmp_path) as out:
        st = os.fstat(out.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        setup_logging("debug", stream=out)
        log = logging.getLogger("gateway.j")
        log.debug("d")
        log.info("i")
        log.warning("w")
        log.error("two\nlines")
        log.critical("c")
        out.flush()
        out.seek(0)
        assert out.read().splitlines() == [
            "<7>gateway.j: d",
            "<6>gateway.j: i",
            "<4>gateway.j: w",
            "<3>gateway.j: two",
            "<3>lines",
            "<2>gateway.j: c",
        ]


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [
        ("journald", r"<6>fzgw-tun3 gateway\.w: hi"),
        ("human", TIMESTAMP + r" INFO  fzgw-tun3 gateway\.w: hi"),
        ("json", r'\{.*"logger": "gateway\.w", "msg": "hi", .*"process": "fzgw-tun3"\}'),
    ],
)
def test_a_child_process_names_itself_in_every_line(fmt: str, expected: str) -> None:
    out = io.StringIO()
    setup_logging("info", fmt, stream=out, process="fzgw-tun3")
    logging.getLogger("gateway.w").info("hi")
    assert re.fullmatch(expected, out.getvalue().strip()), out.getvalue()


def test_journal_stream_of_another_file_means_human(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A child whose stderr was redirected inherits JOURNAL_STREAM but must not use it.
    monkeypatch.setenv("JOURNAL_STREAM", "1:2")
    with journal_stream(tmp_path) as out:
        setup_logging("info", stream=out)
        logging.getLogger("gateway.j").info("plain")
        out.flush()
        out.seek(0)
        assert re.fullmatch(rf"{TIMESTAMP} INFO  gateway\.j: plain\n", out.read())


def test_explicit_format_beats_journal_detection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with journal_stream(tmp_path) as out:
        st = os.fstat(out.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        setup_logging("info", "json", stream=out)
        logging.getLogger("gateway.j").info("structured")
        out.flush()
        out.seek(0)
        assert json.loads(out.read())["msg"] == "structured"


def test_unknown_format() -> None:
    with pytest.raises(ValueError, match="unknown log format 'xml'"):
        setup_logging("info", "xml")


def test_logger_for_test() -> None:
    log = logger_for_test("tests.mine")
    assert log.name == "tests.mine"
    assert log.isEnabledFor(logging.DEBUG)
    assert not enabled("pyroute2", logging.DEBUG)
