"""`firezone-gw`: the command line. Global options live on the click context as GlobalOptions.

Later commands (`run`, `show`, ...) attach to `main` and read the options with
`@pass_global_options`. Every usage error is one `Error: ...` line and exit status 2.
"""

from __future__ import annotations

import ipaddress
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from gateway import keys
from gateway.config import (
    DEFAULT_CONFIG_PATH,
    ConfigError,
    GatewayConfig,
    PeerConfig,
    load_config,
)
from gateway.endpoint import Endpoint, EndpointError, format_endpoint, parse_endpoint
from gateway.telemetry import ha_status
from gateway.telemetry.logsetup import LogDirectiveError, setup_logging

DEFAULT_WORKERS = 2
LOG_FORMATS = ("human", "json")


@dataclass(frozen=True, slots=True)
class GlobalOptions:
    config: Path
    workers: int
    log_filter: str
    log_format: str | None  # None: human, or journald when stderr is the systemd journal
    metrics_listen: Endpoint | None = None


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


@click.group(cls=_Cli, invoke_without_command=True, context_settings={"show_default": True})
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
@click.option(
    "--metrics-listen",
    default=None,
    envvar="FIREZONE_GW_METRICS_LISTEN",
    show_envvar=True,
    help="HOST:PORT for /metrics, /healthz and /readyz [default: the config's metrics.listen].",
)
@click.pass_context
def main(  # noqa: PLR0913, PLR0917 - one parameter per global option, as click passes them
    ctx: click.Context,
    config: Path,
    workers: int,
    log_filter: str,
    log_format: str | None,
    metrics_listen: str | None,
) -> None:
    """firezone-gw: a WireGuard gateway for Linux.

    Without a command, runs the gateway in the foreground (the same as `firezone-gw run`).
    """
    try:
        setup_logging(log_filter, log_format)
    except LogDirectiveError as exc:
        param = next(p for p in ctx.command.params if p.name == "log_filter")
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None
    listen = None
    if metrics_listen is not None:
        from gateway.telemetry.metrics import parse_listen  # noqa: PLC0415 - http.server: only with this option

        try:
            listen = parse_listen(metrics_listen)
        except ValueError as exc:
            param = next(p for p in ctx.command.params if p.name == "metrics_listen")
            raise click.BadParameter(str(exc), ctx=ctx, param=param) from None
    ctx.obj = GlobalOptions(config, workers, log_filter, log_format, listen)
    if ctx.invoked_subcommand is None:
        ctx.invoke(run)


@main.command()
@pass_global_options
def run(options: GlobalOptions) -> None:
    """Run the gateway in the foreground until SIGTERM or SIGINT."""
    from gateway.dataplane.supervisor import Options, run_gateway  # noqa: PLC0415 - data plane only when running

    code = run_gateway(
        Options(
            config_path=options.config,
            workers=options.workers,
            log_filter=options.log_filter,
            log_format=options.log_format,
            metrics_listen=options.metrics_listen,
        )
    )
    sys.exit(code)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@pass_global_options
def show(options: GlobalOptions, as_json: bool) -> None:
    """Show the running gateway's peers and counters, like `wg show`."""
    from gateway.telemetry import show as show_mod  # noqa: PLC0415 - only this command needs it
    from gateway.telemetry.stats import StatsRegion  # noqa: PLC0415 - only this command needs it

    try:
        config = load_config(options.config)
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(1)
    name = config.interface.name
    try:
        segment = show_mod.find_stats_segment(name)
    except OSError as exc:  # e.g. a runtime directory others could have written to
        click.echo(f"Error: cannot read the counters of {name}: {exc}", err=True)
        sys.exit(1)
    if segment is None:
        click.echo(f"Error: no running firezone-gw for interface {name}", err=True)
        sys.exit(1)
    try:
        region = StatsRegion.attach(segment)
    except (OSError, ValueError) as exc:
        click.echo(f"Error: cannot read the counters of {name}: {exc}", err=True)
        sys.exit(1)
    try:
        snapshot = region.snapshot()
        port = region.listen_port or config.interface.listen_port  # `wg` may have changed it
        public_key = region.public_key or config.interface.public_key  # so may the key
    finally:
        region.close()
    info = show_mod.InterfaceInfo(name, keys.encode_key(public_key), port)
    ha = ha_status.read_status() if config.ha is not None else None
    if as_json:
        text = show_mod.to_json(snapshot, info).decode()
        if ha is not None:
            text = text[:-1] + ',"ha":' + json.dumps(ha) + "}"
        click.echo(text)
    else:
        click.echo(show_mod.format_table(snapshot, device=name, interface=info), nl=False)
        for line in ha_status.show_lines(ha):
            click.echo(line)


@main.command("client-config")
@click.option("--peer", "peer_key", default=None, help="Public key of a peer in the config.")
@click.option(
    "--new",
    "new_peer",
    is_flag=True,
    help="Generate a key pair for a new client; print the [[peers]] block to add on stderr.",
)
@click.option("--endpoint", required=True, help="HOST:PORT clients use to reach this gateway.")
@click.option(
    "--route",
    "routes",
    multiple=True,
    help="A network behind the gateway for the client to route to it (repeatable).",
)
@click.option("--qr", is_flag=True, help="Print the config as a QR code for a phone to scan.")
@click.option(
    "--qr-png",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    default=None,
    help="Also write the QR code as a PNG image (mode 0600) to this file.",
)
@pass_global_options
def client_config(  # noqa: PLR0913, PLR0917 - one parameter per option, as click passes them
    options: GlobalOptions,
    peer_key: str | None,
    new_peer: bool,
    endpoint: str,
    routes: tuple[str, ...],
    qr: bool,
    qr_png: Path | None,
) -> None:
    """Print a wg-quick config for a client of this gateway (or its QR code, --qr)."""
    from gateway.cli import clientconfig  # noqa: PLC0415 - only this command needs it

    if (peer_key is None) == (not new_peer):
        raise click.UsageError("give exactly one of --peer PUBKEY or --new")
    try:
        networks = [ipaddress.ip_network(r, strict=True) for r in routes]
    except ValueError as exc:
        raise click.UsageError(f"--route: {exc}") from None
    try:  # the client resolves a name itself: only check the syntax here
        endpoint = format_endpoint(parse_endpoint(endpoint))
    except EndpointError as exc:
        raise click.UsageError(
            f"--endpoint {endpoint!r}: expected HOST:PORT or [V6]:PORT ({exc})"
        ) from None
    try:
        config = load_config(options.config)
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(1)
    private_key = None
    if new_peer:
        private_key = keys.generate_private_key()
        addresses = clientconfig.next_free_addresses(config)
        new = clientconfig.NewPeer(keys.public_key(private_key), addresses)
        peer = PeerConfig(new.public_key, None, addresses, None, None)
        click.echo(f"# add to {options.config}, then reload (SIGHUP):", err=True)
        click.echo(clientconfig.peer_toml(new), err=True)
    else:
        try:
            wanted = keys.decode_key(peer_key or "")
        except keys.KeyFormatError as exc:
            raise click.UsageError(f"--peer: {exc}") from None
        found = [p for p in config.peers if p.public_key == wanted]
        if not found:
            click.echo(f"Error: no peer with public key {peer_key} in {options.config}", err=True)
            sys.exit(1)
        peer = found[0]
    try:
        text = clientconfig.render(
            config, peer=peer, endpoint=endpoint, private_key=private_key, routes=networks
        )
    except clientconfig.ClientConfigError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(1)
    if qr or qr_png is not None:
        from gateway.cli import qr as qr_code  # noqa: PLC0415 - only these options need it

        if qr_png is not None:
            qr_code.write_png(text, qr_png)
        if qr:
            qr_code.print_terminal(text, sys.stdout)
            return
    click.echo(text, nl=False)


@main.command("link-control-socket")
@pass_global_options
def link_control_socket(options: GlobalOptions) -> None:
    """As root before the gateway starts: link /run/wireguard/IFNAME.sock to the socket the
    gateway binds in $FIREZONE_GW_CONTROL_SOCKET_DIR (the unit's ExecStartPre=+)."""
    from gateway.uapi import link  # noqa: PLC0415 - only this command needs it

    target = _control_dir_or_exit()
    try:
        name = load_config(options.config).interface.name
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(1)
    try:
        made = link.link_control_socket(name, target)
    except OSError as exc:
        click.echo(f"Error: cannot link the control socket of {name}: {exc}", err=True)
        sys.exit(1)
    click.echo(f"{made} -> {target / link.socket_name(name)}")


@main.command("unlink-control-socket")
def unlink_control_socket() -> None:
    """As root after the gateway stopped: remove the links link-control-socket made (the
    unit's ExecStopPost=+)."""
    from gateway.uapi import link  # noqa: PLC0415 - only this command needs it

    for path in link.unlink_control_sockets(_control_dir_or_exit()):
        click.echo(f"removed {path}")


def _control_dir_or_exit() -> Path:
    from gateway.uapi.server import CONTROL_DIR_ENV, SOCKET_DIR, control_socket_dir  # noqa: PLC0415 - only the link commands need it

    target = control_socket_dir()
    if target == SOCKET_DIR:
        click.echo(f"Error: {CONTROL_DIR_ENV} is not set: the socket is bound in place", err=True)
        sys.exit(2)
    return target


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


def _import_everything() -> None:
    """Import every module the gateway ships (a broken file fails here, not mid-upgrade)."""
    import importlib  # noqa: PLC0415 - only the upgrade check needs it
    import pkgutil  # noqa: PLC0415 - only the upgrade check needs it

    for package in ("gateway", "tunio", "shm_ring", "ippacket"):
        root = importlib.import_module(package)
        for module in pkgutil.walk_packages(root.__path__, f"{package}."):
            if not module.name.endswith("__main__"):
                importlib.import_module(module.name)


@main.command("ha-notify")
@click.argument("state", type=click.Choice(["MASTER", "BACKUP", "FAULT"], case_sensitive=False))
def ha_notify(state: str) -> None:
    """keepalived's notify hook: tell the gateway its HA role (config/keepalived-ha.conf).

    Written to the runtime directory, where the running gateway looks every 0.1 s (and a
    restarted one finds it). `python3 -m gateway.ha.role STATE` does the same without
    starting the whole CLI (faster failover on a busy host)."""
    from gateway.ha import role  # noqa: PLC0415 - only this command needs it

    sys.exit(role.main([state]))


@main.command("check-config")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    show_default="the global --config",
    help="Configuration file to check.",
)
@click.option(
    "--import-all",
    is_flag=True,
    hidden=True,
    help="Also import every module: a running gateway's check of this version before it "
    "upgrades in place to it (SIGUSR2).",
)
@pass_global_options
def check_config(options: GlobalOptions, config_path: Path | None, import_all: bool) -> None:
    """Validate the configuration and print a summary; exit 1 listing every error."""
    if import_all:
        _import_everything()
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
        f"metrics on {format_endpoint(config.metrics.listen)}",
    ]
    if config.resources:
        lines.append(f"{len(config.resources)} resource{_plural(config.resources)}")
        for resource in config.resources:
            filters = ", ".join(str(f) for f in resource.filters) or "every protocol and port"
            lines.append(f"  resource {resource.name}: {resource.address} ({filters})")
    else:
        lines.append("no resources: every peer reaches everything routed behind the gateway")
    lines.append(f"{len(config.peers)} peer{_plural(config.peers)}")
    for peer in config.peers:
        allowed = ", ".join(str(n) for n in peer.allowed_ips) or "none"
        lines.append(f"  peer {keys.encode_key(peer.public_key)}: allowed IPs {allowed}")
        if peer.endpoint is not None:
            lines.append(f"    endpoint {format_endpoint(peer.endpoint)}")
        if config.resources:
            lines.append(f"    resources {', '.join(peer.resources) or 'none'}")
    if config.ha is not None:
        ha = config.ha
        lines.append(
            f"ha: {ha.role} until keepalived says otherwise; replication on "
            f"{format_endpoint(ha.listen)} with {format_endpoint(ha.peer)} "
            f"(key {keys.encode_key(ha.peer_public_key)}), at most {ha.rate} bytes/s"
        )
    return lines


def _plural(items: Sequence[object]) -> str:
    return "" if len(items) == 1 else "s"
