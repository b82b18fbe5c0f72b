"""The `[ha]` table: two gateways for one site (see config/gateway.toml for each key).

Checked in two steps as the rest of the config: `parse_ha` (pure) and `resolve_ha` (reads
the key file, checks the listen address is this host's); every error names its key
(`ha.<key>`) and the value that was wrong.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import msgspec

from gateway import keys
from gateway.endpoint import Endpoint, EndpointError, parse_endpoint

MIN_RATE = 16 * 1024
MAX_RATE = 1 << 30
DEFAULT_RATE = 4 * 1024 * 1024  # bytes/s: a full resync of 20,000 sessions in under a second
ROLES = ("active", "standby")


class HaToml(msgspec.Struct, forbid_unknown_fields=True):
    listen: str
    peer: str
    secret_key_file: str
    peer_public_key: str
    role: Literal["active", "standby"] = "standby"
    rate: int = DEFAULT_RATE


@dataclass(frozen=True, slots=True)
class HaConfig:
    listen: Endpoint  # numeric: the address the operator names, never a wildcard
    peer: Endpoint
    secret_key: bytes = field(repr=False)  # the replication key (NaCl Box), not WireGuard's
    peer_public_key: bytes
    role: str = "standby"  # until keepalived's first notify
    rate: int = DEFAULT_RATE


AddError = Callable[[str, str], None]


@dataclass(frozen=True, slots=True)
class HaDraft:
    """`[ha]` checked on its own (`parse_ha`, pure); `resolve_ha` reads the key file and
    checks the listen address is this host's."""

    listen: Endpoint
    peer: Endpoint
    secret_key_file: str
    peer_public_key: bytes
    role: str
    rate: int


def parse_ha(raw: dict[str, Any], add: AddError) -> HaDraft | None:
    """`[ha]` as found in the file; None after reporting errors through `add(path, problem)`."""
    try:
        toml = msgspec.convert(raw, HaToml, str_keys=True)
    except msgspec.ValidationError as exc:
        message, _, where = str(exc).partition(" - at `$.")
        add(f"ha.{where.rstrip('`')}" if where else "ha", message)
        return None
    listen = _endpoint(toml.listen, "ha.listen", add)
    peer = _endpoint(toml.peer, "ha.peer", add)
    if listen is not None and peer is not None and listen == peer:
        add("ha.peer", f"is the same address as ha.listen ({toml.peer!r})")
        peer = None
    rate_ok = MIN_RATE <= toml.rate <= MAX_RATE
    if not rate_ok:
        add("ha.rate", f"expected bytes per second in {MIN_RATE}..{MAX_RATE}, got {toml.rate}")
    peer_key = None
    try:
        peer_key = keys.decode_key(toml.peer_public_key)
    except keys.KeyFormatError as exc:
        add("ha.peer_public_key", f"{exc} (got {toml.peer_public_key[:60]!r})")
    if listen is None or peer is None or peer_key is None or not rate_ok:
        return None
    return HaDraft(listen, peer, toml.secret_key_file, peer_key, toml.role, toml.rate)


def resolve_ha(
    draft: HaDraft, base_dir: Path, wireguard_key: bytes | None, add: AddError
) -> HaConfig | None:
    """The draft with its secret key read (relative to `base_dir`) and its listen address
    checked against this host's; None after reporting errors."""
    listen_ok = _is_local(draft.listen[0])
    if not listen_ok:
        add("ha.listen", f"{draft.listen[0]} is not an address of this host")
    secret = _secret(base_dir, draft.secret_key_file, wireguard_key, add)
    if secret is not None and keys.public_key(secret) == draft.peer_public_key:
        add("ha.peer_public_key", "is this node's own replication key; give the other node's")
        secret = None
    if secret is None or not listen_ok:
        return None
    return HaConfig(draft.listen, draft.peer, secret, draft.peer_public_key, draft.role, draft.rate)


def _endpoint(text: str, path: str, add: AddError) -> Endpoint | None:
    try:
        endpoint = parse_endpoint(text, numeric=True)
    except EndpointError as exc:
        add(path, f"expected an IP address and port such as 192.0.2.10:51821, got {text!r} ({exc})")
        return None
    if ipaddress.ip_address(endpoint[0]).is_unspecified:
        add(path, f"name one address of this host, not a wildcard (got {text!r})")
        return None
    return endpoint


def _is_local(host: str) -> bool:
    """Whether this host has the address (binding port 0 on it succeeds)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, 0))
        except OSError:
            return False
    return True


def _secret(base_dir: Path, name: str, wireguard_key: bytes | None, add: AddError) -> bytes | None:
    path = base_dir / name
    try:
        secret = keys.read_key_file(path)
    except keys.KeyFileMissingError as exc:
        add(
            "ha.secret_key_file", f"{exc}; create it with: (umask 077; firezone-gw genkey > {path})"
        )
        return None
    except (keys.KeyFileError, keys.KeyFormatError) as exc:
        add("ha.secret_key_file", f"{exc} ({name!r})")
        return None
    if wireguard_key is not None and secret == wireguard_key:
        add("ha.secret_key_file", f"{name!r} holds the WireGuard private key; give its own key")
        return None
    return secret
