from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result

from gateway import keys
from gateway.cli import GlobalOptions, main, pass_global_options
from gateway.telemetry.logsetup import setup_logging

ENV_VARS = (
    "FIREZONE_GW_CONFIG",
    "FIREZONE_GW_WORKERS",
    "FIREZONE_GW_LOG",
    "FIREZONE_GW_LOG_FORMAT",
)
SCRIPT = Path(sys.executable).with_name("firezone-gw")  # the installed console script


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in (*ENV_VARS, "JOURNAL_STREAM"):
        monkeypatch.delenv(name, raising=False)
    yield
    setup_logging("info", "human")  # the CLI pointed logging at the runner's stderr


@pytest.fixture
def probe() -> Iterator[list[GlobalOptions]]:
    """A throw-away subcommand that records the global options it was given and logs."""
    seen: list[GlobalOptions] = []

    @click.command("probe")
    @pass_global_options
    def probe_command(options: GlobalOptions) -> None:
        seen.append(options)
        logging.getLogger("gateway.probe").debug("probe debug")
        logging.getLogger("gateway.probe").info("probe info")

    main.add_command(probe_command)
    try:
        yield seen
    finally:
        main.commands.pop("probe")


def run(*args: str, stdin: str | bytes | None = None, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, list(args), input=stdin, env=env)


def assert_usage_error(result: Result, *fragments: str) -> None:
    """Exit 2, exactly one line on stderr, no traceback, naming what was wrong."""
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    for fragment in fragments:
        assert fragment in lines[0]
    assert "Traceback" not in result.output


def wg(*args: str, stdin: str | None = None) -> str:
    out = subprocess.run(["wg", *args], input=stdin, capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_genkey_is_a_clamped_base64_key() -> None:
    result = run("genkey")
    assert result.exit_code == 0
    text = result.stdout
    assert text.endswith("\n")
    key = keys.decode_key(text)
    assert keys.clamp_private_key(key) == key
    assert run("genkey").stdout != text


def test_genpsk_is_a_base64_key() -> None:
    result = run("genpsk")
    assert result.exit_code == 0
    assert len(keys.decode_key(result.stdout)) == 32
    assert len(result.stdout) == 45
    assert run("genpsk").stdout != result.stdout


def test_pubkey_matches_wg_pubkey_on_random_keys() -> None:
    for _ in range(8):
        private = keys.encode_key(os.urandom(32))
        result = run("pubkey", stdin=private + "\n")
        assert result.exit_code == 0, result.output
        assert result.stdout == wg("pubkey", stdin=private) + "\n"


def test_wg_genkey_into_pubkey() -> None:
    private = wg("genkey")
    assert run("pubkey", stdin=private).stdout.strip() == wg("pubkey", stdin=private)


def test_installed_genkey_pipe_pubkey_equals_wg_pubkey(tmp_path: Path) -> None:
    key_file = tmp_path / "k"
    shell = f"{SCRIPT} genkey | tee {key_file} | {SCRIPT} pubkey"
    ours = subprocess.run(shell, shell=True, capture_output=True, text=True, check=True)  # noqa: S602 - the pipeline is the thing under test
    private = key_file.read_text()
    assert ours.stdout.strip() == wg("pubkey", stdin=private)
    assert ours.stderr == ""


@pytest.mark.parametrize(
    ("stdin", "fragment"),
    [
        ("", "key is empty"),
        ("abc\n", "must be 44 base64 characters (32 bytes), got 3 characters"),
        ("!" * 43 + "=", "not valid base64"),
        (b"\xff" * 44, "not ASCII"),
        ("A" * 5000, "more than 1024 bytes"),
    ],
    ids=["empty", "short", "bad-chars", "binary", "huge"],
)
def test_pubkey_bad_input(stdin: str | bytes, fragment: str) -> None:
    assert_usage_error(run("pubkey", stdin=stdin), "invalid private key on stdin", fragment)


def test_global_option_defaults(probe: list[GlobalOptions]) -> None:
    assert run("probe").exit_code == 0
    assert probe == [GlobalOptions(Path("/etc/firezone-gw/gateway.toml"), 2, "info", None)]


def test_global_options_from_environment(probe: list[GlobalOptions]) -> None:
    env = {
        "FIREZONE_GW_CONFIG": "/tmp/gw.toml",
        "FIREZONE_GW_WORKERS": "4",
        "FIREZONE_GW_LOG": "debug,pyroute2=info",
        "FIREZONE_GW_LOG_FORMAT": "json",
    }
    result = run("probe", env=env)
    assert result.exit_code == 0, result.output
    assert probe == [GlobalOptions(Path("/tmp/gw.toml"), 4, "debug,pyroute2=info", "json")]
    messages = [json.loads(line)["msg"] for line in result.stderr.splitlines()]
    assert messages == ["probe debug", "probe info"]


def test_command_line_beats_environment(probe: list[GlobalOptions]) -> None:
    env = {"FIREZONE_GW_WORKERS": "4", "FIREZONE_GW_LOG": "debug"}
    result = run(
        "--workers", "3", "--log-filter", "warning", "--config", "x.toml", "probe", env=env
    )
    assert result.exit_code == 0, result.output
    assert probe == [GlobalOptions(Path("x.toml"), 3, "warning", None)]
    assert result.stderr == ""


def test_human_log_format_on_the_cli(probe: list[GlobalOptions]) -> None:
    result = run("--log-format", "human", "probe")
    assert result.exit_code == 0
    assert result.stderr.endswith(" INFO  gateway.probe: probe info\n")
    assert "probe debug" not in result.stderr


@pytest.mark.parametrize(
    ("args", "env", "fragments"),
    [
        (["--workers", "0", "genkey"], {}, ["'--workers'", "0 is not in the range x>=1"]),
        (["--workers", "two", "genkey"], {}, ["'--workers'", "'two'"]),
        (["genkey"], {"FIREZONE_GW_WORKERS": "two"}, ["FIREZONE_GW_WORKERS", "'two'"]),
        (["genkey"], {"FIREZONE_GW_WORKERS": "0"}, ["FIREZONE_GW_WORKERS", "range x>=1"]),
        (["genkey"], {"FIREZONE_GW_LOG_FORMAT": "xml"}, ["FIREZONE_GW_LOG_FORMAT", "'xml'"]),
        (["--log-format", "xml", "genkey"], {}, ["'--log-format'", "'xml'"]),
        (["--log-filter", "debug,=info", "genkey"], {}, ["'--log-filter'", "'=info'", "empty"]),
        (["genkey"], {"FIREZONE_GW_LOG": "gateway=loud"}, ["FIREZONE_GW_LOG", "'gateway=loud'"]),
        (["--bogus", "genkey"], {}, ["No such option", "--bogus"]),
        (["nosuch"], {}, ["No such command", "nosuch"]),
        (["check-config", "--bogus"], {}, ["No such option", "--bogus"]),
        (["genkey", "extra"], {}, ["unexpected extra argument", "extra"]),
    ],
    ids=[
        "workers-zero", "workers-text", "workers-env-text", "workers-env-zero", "format-env",
        "format-option", "filter-option", "filter-env", "unknown-option", "unknown-command",
        "subcommand-option", "extra-argument",
    ],
)  # fmt: skip
def test_bad_invocation_is_one_line_exit_2(
    args: list[str], env: dict[str, str], fragments: list[str]
) -> None:
    assert_usage_error(run(*args, env=env), *fragments)


def test_bad_env_var_in_a_real_process_has_no_traceback() -> None:
    env = {**os.environ, "FIREZONE_GW_WORKERS": "many", "FIREZONE_GW_LOG": "x=y"}
    result = subprocess.run(
        [str(SCRIPT), "genkey"], env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1
    assert "FIREZONE_GW_WORKERS" in result.stderr


def write_config(folder: Path, body: str) -> Path:
    key = folder / "private.key"
    keys.ensure_private_key_file(key)
    path = folder / "gateway.toml"
    path.write_text(
        '[interface]\nname = "fzgw7"\nprivate_key_file = "private.key"\nlisten_port = 51999\n'
        + body
    )
    return path


def test_check_config_summary(tmp_path: Path) -> None:
    peer = keys.encode_key(keys.public_key(keys.generate_private_key()))
    body = f'[[peers]]\npublic_key = "{peer}"\nallowed_ips = ["100.64.0.2/32", "fd00::2/128"]\n'
    path = write_config(tmp_path, body)
    result = run("check-config", "--config", str(path))
    assert result.exit_code == 0, result.output
    own = keys.encode_key(keys.public_key(keys.read_key_file(tmp_path / "private.key")))
    assert result.stdout.splitlines() == [
        f"{path}: OK",
        "interface fzgw7: listen port 51999, mtu 1280",
        f"  public key {own}",
        "  addresses none",
        "metrics on 127.0.0.1:9586",
        "no resources: every peer reaches everything routed behind the gateway",
        "1 peer",
        f"  peer {peer}: allowed IPs 100.64.0.2/32, fd00::2/128",
    ]


def test_check_config_reads_the_global_option_and_env(tmp_path: Path) -> None:
    path = write_config(tmp_path, "")
    assert run("--config", str(path), "check-config").exit_code == 0
    result = run("check-config", env={"FIREZONE_GW_CONFIG": str(path)})
    assert result.exit_code == 0
    assert result.stdout.splitlines()[-1] == "0 peers"


def test_check_config_option_beats_global(tmp_path: Path) -> None:
    path = write_config(tmp_path, "")
    result = run("--config", str(tmp_path / "absent.toml"), "check-config", "--config", str(path))
    assert result.exit_code == 0, result.output


def test_check_config_lists_every_error_and_exits_1(tmp_path: Path) -> None:
    path = write_config(
        tmp_path, 'mtu = 10\n[[peers]]\npublic_key = "x"\nallowed_ips = ["1.2.3.4/8"]\n'
    )
    result = run("check-config", "--config", str(path))
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "invalid configuration, 3 errors:",
        f"  {path}: interface.mtu: expected an integer in 1280..65535, got 10",
        f"  {path}: peers[0].public_key: key must be 44 base64 characters (32 bytes), "
        "got 1 characters",
        f"  {path}: peers[0].allowed_ips[0]: 1.2.3.4/8 has host bits set; did you mean 1.0.0.0/8?",
    ]


def test_check_config_missing_file_exits_1(tmp_path: Path) -> None:
    result = run("check-config", "--config", str(tmp_path / "none.toml"))
    assert result.exit_code == 1
    assert "cannot read config file: No such file or directory" in result.stderr
    assert "Traceback" not in result.output


def test_shipped_example_checks_once_the_key_exists(tmp_path: Path) -> None:
    example = Path(__file__).resolve().parent.parent / "config" / "gateway.toml"
    copy = tmp_path / "gateway.toml"
    copy.write_text(example.read_text())
    missing = run("check-config", "--config", str(copy))
    assert missing.exit_code == 1
    assert f"firezone-gw genkey > {tmp_path / 'private.key'}" in missing.stderr
    readme_command = f"umask 077; {SCRIPT} genkey > {tmp_path / 'private.key'}"
    subprocess.run(readme_command, shell=True, check=True)  # noqa: S602 - as the README runs it
    result = run("check-config", "--config", str(copy))
    assert result.exit_code == 0, result.output
    assert "interface fzgw0: listen port 51820, mtu 1280" in result.stdout
