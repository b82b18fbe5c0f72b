"""Text of the userspace API: `set=1` bodies parsed into typed requests (completely, before
anything is applied, so a bad line changes nothing) and `get=1` replies formatted."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

from gateway.endpoint import Endpoint, EndpointError, format_endpoint
from gateway.endpoint import parse_endpoint as parse_endpoint_text
from gateway.ipnet import IPNetwork
from gateway.uapi.types import (
    ERR_INVALID,
    ERR_PROTOCOL,
    ZERO_KEY,
    DeviceState,
    PeerChange,
    SetRequest,
    UapiError,
)
from gateway.wireguard.constants import KEY_SIZE

_DIGITS = re.compile(r"[0-9]+")
_HEX_KEY = re.compile(r"[0-9a-fA-F]{64}")

# ---- value parsing ----


def parse_key(value: str, what: str) -> bytes:
    # Never quote the value: it may be a private or preshared key, and errors are logged.
    if not _HEX_KEY.fullmatch(value):
        problem = "non-hex characters" if len(value) == 2 * KEY_SIZE else f"{len(value)} characters"
        raise UapiError(ERR_INVALID, f"{what}: expected {2 * KEY_SIZE} hex digits, got {problem}")
    return bytes.fromhex(value)


def parse_uint(value: str, bits: int, what: str) -> int:
    if len(value) > 20 or not _DIGITS.fullmatch(value) or int(value) >= 1 << bits:  # noqa: PLR2004 (digits of 2^64)
        raise UapiError(ERR_INVALID, f"{what}: expected an integer below 2^{bits}, got {value!r}")
    return int(value)


def parse_endpoint(value: str) -> Endpoint:
    """A numeric endpoint, as wireguard-go's netip.ParseAddrPort: `wg` resolves names itself."""
    try:
        return parse_endpoint_text(value, min_port=0, numeric=True)
    except EndpointError as exc:
        raise UapiError(ERR_INVALID, f"endpoint: {exc}: {value[:80]!r}") from None


def parse_prefix(value: str) -> IPNetwork:
    address_text, sep, bits_text = value.partition("/")
    if not sep or "%" in address_text:
        raise UapiError(ERR_INVALID, f"allowed_ip: expected address/bits, got {value!r}")
    try:
        address = ipaddress.ip_address(address_text)
    except ValueError:
        raise UapiError(ERR_INVALID, f"allowed_ip: bad address in {value!r}") from None
    bits = parse_uint(bits_text, 8, "allowed_ip prefix length")
    if bits > address.max_prefixlen:
        raise UapiError(ERR_INVALID, f"allowed_ip: prefix length too long in {value!r}")
    return ipaddress.ip_network((address, bits), strict=False)


def _parse_true(value: str, what: str) -> None:
    if value != "true":
        raise UapiError(ERR_INVALID, f"{what}: only 'true' is accepted, got {value!r}")


# ---- set request parser ----


@dataclass(slots=True)
class _PeerBuilder:
    public_key: bytes
    remove: bool = False
    update_only: bool = False
    preshared_key: bytes | None = None
    endpoint: Endpoint | None = None
    keepalive: int | None = None
    replace_allowed_ips: bool = False
    allowed: dict[IPNetwork, bool] = field(default_factory=dict)  # prefix -> add (last wins)

    def line(self, key: str, value: str) -> None:
        if key in ("update_only", "remove", "replace_allowed_ips"):
            _parse_true(value, key)
        # After remove=true wireguard-go keeps validating lines but applies none of them.
        ignored = self.remove
        match key:
            case "update_only":
                self.update_only = True
            case "remove":
                self.remove = True
            case "replace_allowed_ips" if not ignored:
                self.replace_allowed_ips = True
                self.allowed.clear()
            case "replace_allowed_ips":
                pass
            case "protocol_version":
                if value != "1":
                    raise UapiError(ERR_INVALID, f"protocol_version: only 1, got {value!r}")
            case _:
                self._value_line(key, value, ignored)

    def _value_line(self, key: str, value: str, ignored: bool) -> None:
        match key:
            case "preshared_key":
                psk = parse_key(value, key)
                if not ignored:
                    self.preshared_key = psk
            case "endpoint":
                endpoint = parse_endpoint(value)
                if not ignored:
                    self.endpoint = endpoint
            case "persistent_keepalive_interval":
                keepalive = parse_uint(value, 16, key)
                if not ignored:
                    self.keepalive = keepalive
            case "allowed_ip":
                add = not value.startswith("-")
                prefix = parse_prefix(value if add else value[1:])
                if not ignored:
                    self.allowed.pop(prefix, None)  # re-insert: keep line order
                    self.allowed[prefix] = add
            case _:
                raise UapiError(ERR_INVALID, f"invalid UAPI peer key: {key!r}")

    def build(self) -> PeerChange:
        if self.remove:
            return PeerChange(self.public_key, remove=True)
        return PeerChange(
            public_key=self.public_key,
            update_only=self.update_only,
            preshared_key=self.preshared_key,
            endpoint=self.endpoint,
            persistent_keepalive_interval=self.keepalive,
            replace_allowed_ips=self.replace_allowed_ips,
            allowed_ips=tuple(p for p, add in self.allowed.items() if add),
            removed_allowed_ips=tuple(p for p, add in self.allowed.items() if not add),
        )


class SetParser:
    """Folds the `key=value` lines of one set request into a SetRequest."""

    def __init__(self) -> None:
        self._private_key: bytes | None = None
        self._listen_port: int | None = None
        self._fwmark: int | None = None
        self._replace_peers = False
        self._peers: list[PeerChange] = []
        self._peer: _PeerBuilder | None = None

    def line(self, line: str) -> None:
        key, sep, value = line.partition("=")
        if not sep:
            # Not quoted: a mistyped `private_key` line would put the key into the log.
            raise UapiError(ERR_PROTOCOL, f"failed to parse a line of {len(line)} bytes: no '='")
        if key == "public_key":
            public_key = parse_key(value, key)
            self._finish_peer()
            self._peer = _PeerBuilder(public_key)
        elif self._peer is not None:
            self._peer.line(key, value)
        else:
            self._device_line(key, value)

    def _device_line(self, key: str, value: str) -> None:
        match key:
            case "private_key":
                self._private_key = parse_key(value, key)
            case "listen_port":
                self._listen_port = parse_uint(value, 16, key)
            case "fwmark":
                self._fwmark = parse_uint(value, 32, key)
            case "replace_peers":
                _parse_true(value, key)
                self._replace_peers = True
                self._peers.clear()
            case _:
                raise UapiError(ERR_INVALID, f"invalid UAPI device key: {key!r}")

    def _finish_peer(self) -> None:
        if self._peer is not None:
            self._peers.append(self._peer.build())
            self._peer = None

    def finish(self) -> SetRequest:
        self._finish_peer()
        return SetRequest(
            private_key=self._private_key,
            listen_port=self._listen_port,
            fwmark=self._fwmark,
            replace_peers=self._replace_peers,
            peers=tuple(self._peers),
        )


def parse_set(text: str) -> SetRequest:
    """Parse the body of a set request (the lines after `set=1`, no blank line)."""
    parser = SetParser()
    for line in text.splitlines():
        parser.line(line)
    return parser.finish()


# ---- replies ----


def format_errno(errno: int) -> bytes:
    return f"errno={errno}\n\n".encode()


def format_get(state: DeviceState) -> bytes:
    """The full reply to `get=1`, in wireguard-go's order, ending with errno=0."""
    lines: list[str] = []
    if state.private_key is not None and state.private_key != ZERO_KEY:
        lines.append(f"private_key={state.private_key.hex()}")
    if state.listen_port:
        lines.append(f"listen_port={state.listen_port}")
    if state.fwmark:
        lines.append(f"fwmark={state.fwmark}")
    for peer in state.peers:
        lines.append(f"public_key={peer.public_key.hex()}")
        lines.append(f"preshared_key={(peer.preshared_key or ZERO_KEY).hex()}")
        lines.append("protocol_version=1")
        if peer.endpoint is not None:
            lines.append(f"endpoint={format_endpoint(peer.endpoint)}")
        seconds, nanoseconds = divmod(peer.last_handshake_ns, 1_000_000_000)
        lines.append(f"last_handshake_time_sec={seconds}")
        lines.append(f"last_handshake_time_nsec={nanoseconds}")
        lines.append(f"tx_bytes={peer.tx_bytes}")
        lines.append(f"rx_bytes={peer.rx_bytes}")
        lines.append(f"persistent_keepalive_interval={peer.persistent_keepalive_interval}")
        lines.extend(f"allowed_ip={prefix}" for prefix in peer.allowed_ips)
    lines.append("errno=0\n\n")
    return "\n".join(lines).encode()


def format_set(state: DeviceState) -> str:
    """A `set` body that recreates `state` exactly (replace_peers), without the listen port.

    The gateway keeps this as its run-time configuration, so a restarted crypto process comes
    back with the peers that `wg` configured, not only those of the config file.
    """
    lines: list[str] = [f"private_key={(state.private_key or ZERO_KEY).hex()}"]
    if state.fwmark:
        lines.append(f"fwmark={state.fwmark}")
    lines.append("replace_peers=true")
    for peer in state.peers:
        lines.append(f"public_key={peer.public_key.hex()}")
        lines.append(f"preshared_key={(peer.preshared_key or ZERO_KEY).hex()}")
        if peer.endpoint is not None:
            lines.append(f"endpoint={format_endpoint(peer.endpoint)}")
        lines.append(f"persistent_keepalive_interval={peer.persistent_keepalive_interval}")
        lines.append("replace_allowed_ips=true")
        lines.extend(f"allowed_ip={prefix}" for prefix in peer.allowed_ips)
    return "\n".join(lines) + "\n"
