"""`firezone-gw`: the command line. Global options live on the click context as GlobalOptions.

Later commands (`run`, `show`, ...) attach to `main` and read the options with
`@pass_global_options`. Every usage error is one `Error: ...` line and exit status 2.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from gateway import keys
from gateway.config import DEFAULT_CONFIG_PATH, ConfigError, GatewayConfig, load_config
from gateway.logsetup import LogDirectiveError, setup_logging

DEFAULT_WORKERS = 2
LOG_FORMATS = ("human", "json")


@dataclass(frozen=True, slots=True)
class GlobalOptions:
    config: Path
    workers: int
    log_filter: str
    log_format: str | None  # None: human, or journald when stderr is the systemd journal


pass_global_options = click.make_pass_decorator(GlobalOptions)


class UsageLine(click.ClickException):
    """A usage error shown as one line (no usage text, no traceback), exit status 2."""

    exit_code = 2

    def __init__(self, error: click.UsageError) -> None:
        super().__init__(" ".join(error.format_message().split()))


class _Cli(click.Group):
    """Turns click's multi-line usage errors, here and in subcommands, into one line."""

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as exc:
            raise UsageLine(exc) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as exc:
            raise UsageLine(exc) from None


@click.group(cls=_Cli, context_settings={"show_default": True})
@click.option(
    "--config",
    type=click.Path(dir_okay=False, path_type=Path),
    default=DEFAULT_CONFIG_PATH,
    envvar="FIREZONE_GW_CONFIG",
    show_envvar=True,
    help="Gateway configuration file (TOML).",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=DEFAULT_WORKERS,
    envvar="FIREZONE_GW_WORKERS",
    show_envvar=True,
    help="Number of TUN worker processes (one TUN queue each).",
)
@click.option(
    "--log-filter",
    default="info",
    envvar="FIREZONE_GW_LOG",
    show_envvar=True,
    help="Log directives, RUST_LOG style: LEVEL or LOGGER=LEVEL, comma-separated.",
)
@click.option(
    "--log-format",
    type=click.Choice(LOG_FORMATS),
    default=None,
    envvar="FIREZONE_GW_LOG_FORMAT",
    show_envvar=True,
    help="Log format [default: human; journald under systemd].",
)
@click.pass_context
def main(
    ctx: click.Context, config: Path, workers: int, log_filter: str, log_format: str | None
) -> None:
    """firezone-gw: a WireGuard gateway for Linux."""
    try:
        setup_logging(log_filter, log_format)
    except LogDirectiveError as exc:
        param = next(p for p in ctx.command.params if p.name == "log_filter")
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None
    ctx.obj = GlobalOptions(config, workers, log_filter, log_format)


@main.command()
def genkey() -> None:
    """Print a new private key (base64), like `wg genkey`."""
    click.echo(keys.encode_key(keys.generate_private_key()))


@main.command()
def genpsk() -> None:
    """Print a new preshared key (base64), like `wg genpsk`."""
    click.echo(keys.encode_key(keys.generate_preshared_key()))


@main.command()
def pubkey() -> None:
    """Read a private key on stdin, print its public key, like `wg pubkey`."""
    data = sys.stdin.buffer.read(keys.MAX_KEY_FILE_BYTES + 1)
    try:
        if len(data) > keys.MAX_KEY_FILE_BYTES:
            raise keys.KeyFormatError(f"more than {keys.MAX_KEY_FILE_BYTES} bytes")
        private_key = keys.decode_key(data.decode("ascii"))
    except (keys.KeyFormatError, UnicodeDecodeError) as exc:
        problem = "not ASCII" if isinstance(exc, UnicodeDecodeError) else str(exc)
        raise click.UsageError(f"invalid private key on stdin: {problem}") from None
    click.echo(keys.encode_key(keys.public_key(private_key)))


@main.command("check-config")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    show_default="the global --config",
    help="Configuration file to check.",
)
@pass_global_options
def check_config(options: GlobalOptions, config_path: Path | None) -> None:
    """Validate the configuration and print a summary; exit 1 listing every error."""
    path = config_path if config_path is not None else options.config
    try:
        config = load_config(path)
    except ConfigError as exc:
        count = len(exc.errors)
        click.echo(f"invalid configuration, {count} error{'' if count == 1 else 's'}:", err=True)
        for line in exc.errors:
            click.echo(f"  {line}", err=True)
        sys.exit(1)
    for line in summary_lines(config):
        click.echo(line)


def summary_lines(config: GatewayConfig) -> Sequence[str]:
    """A short human summary of a valid config, as check-config prints it."""
    interface = config.interface
    addresses = ", ".join(str(a) for a in interface.addresses) or "none"
    lines = [
        f"{config.source}: OK",
        f"interface {interface.name}: listen port {interface.listen_port}, mtu {interface.mtu}",
        f"  public key {keys.encode_key(interface.public_key)}",
        f"  addresses {addresses}",
        f"metrics on {_format_endpoint(config.metrics.listen)}",
        f"{len(config.peers)} peer{'' if len(config.peers) == 1 else 's'}",
    ]
    for peer in config.peers:
        allowed = ", ".join(str(n) for n in peer.allowed_ips) or "none"
        lines.append(f"  peer {keys.encode_key(peer.public_key)}: allowed IPs {allowed}")
        if peer.endpoint is not None:
            lines.append(f"    endpoint {_format_endpoint(peer.endpoint)}")
    return lines


def _format_endpoint(endpoint: tuple[str, int]) -> str:
    host, port = endpoint
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
