"""The gateway's config file, written in the schema of config/gateway.toml.

One writer for every test and benchmark, so a schema change breaks one place. A test may
rewrite the file while the gateway runs (then SIGHUP) to exercise reloads.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field

from testbed.addresses import GATEWAY_ADDRESSES, LISTEN_PORT, TUNNEL_MTU, ClientSpec

METRICS_LISTEN = "127.0.0.1:9586"


@dataclass(frozen=True)
class GatewayPeer:
    """One [[peers]] entry; wireguard-go as the gateway is configured from the same."""

    public_key: str
    allowed_ips: list[str] = field(default_factory=list)
    endpoint: str | None = None
    resources: list[str] = field(default_factory=list)  # names of [[resources]] granted


def peers_for(clients: Sequence[ClientSpec]) -> list[GatewayPeer]:
    """The gateway's view of `clients`, as their ClientOptions say (unknown ones left out)."""
    return [
        GatewayPeer(
            client.public_key,
            client.allowed_ips,
            client.endpoint if client.options.gateway_knows_endpoint else None,
        )
        for client in clients
        if client.options.known_to_gateway
    ]


def _toml_value(value: object) -> str:
    # JSON strings, integers and arrays of strings are valid TOML values.
    if isinstance(value, bool | int | str) or (
        isinstance(value, list | tuple) and all(isinstance(v, str) for v in value)
    ):
        return json.dumps(value)
    raise TypeError(f"no TOML encoding for {value!r}")


def gateway_toml(
    *,
    ifname: str,
    private_key_file: str,
    peers: Sequence[GatewayPeer],
    addresses: Sequence[str] = GATEWAY_ADDRESSES,
    listen_port: int = LISTEN_PORT,
    mtu: int = TUNNEL_MTU,
    metrics_listen: str = METRICS_LISTEN,
    extra: str = "",
) -> str:
    """The config; `extra` is TOML appended as it is ([dns], [[resources]])."""
    interface: dict[str, object] = {
        "name": ifname,
        "private_key_file": private_key_file,
        "listen_port": listen_port,
        "addresses": list(addresses),
        "mtu": mtu,
    }
    lines = ["[interface]", *(f"{k} = {_toml_value(v)}" for k, v in interface.items())]
    for peer in peers:
        entry: dict[str, object] = {"public_key": peer.public_key, "allowed_ips": peer.allowed_ips}
        if peer.endpoint is not None:
            entry["endpoint"] = peer.endpoint
        if peer.resources:
            entry["resources"] = peer.resources
        lines += ["", "[[peers]]", *(f"{k} = {_toml_value(v)}" for k, v in entry.items())]
    lines += ["", "[metrics]", f"listen = {_toml_value(metrics_listen)}"]
    return "\n".join(lines) + "\n" + extra
