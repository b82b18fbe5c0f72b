"""The gateway's TOML configuration: decoded with msgspec, validated once into typed objects.

Decoding happens per section (the interface table, each peer, the metrics table) so that one
run reports every problem in the file, each as `<file>: <key path>: <what was expected>`.
"""

from __future__ import annotations

import datetime
import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, TypeVar

import msgspec
import tomli

from gateway import keys
from gateway.endpoint import Endpoint, EndpointError, parse_endpoint, resolve_endpoint
from gateway.gcpause import gc_paused
from gateway.ha.settings import HaConfig, HaDraft, parse_ha, resolve_ha
from gateway.ipnet import (
    HostBitsSet,
    IPInterface,
    IPNetwork,
    NetworkError,
    parse_interface,
    parse_network,
)
from gateway.resources.filters import parse_filter
from gateway.resources.proxy_ranges import proxy_range_holding
from gateway.resources.resource import MAX_NAME_LENGTH, Resource, parse_resource_address
from gateway.udp_io import DEFAULT_RCVBUF, DEFAULT_SNDBUF

DEFAULT_CONFIG_PATH = Path("/etc/firezone-gw/gateway.toml")
DEFAULT_LISTEN_PORT = 51820
DEFAULT_MTU = 1280
MIN_MTU = 1280
MAX_MTU = 65535
MAX_PORT = 65535
MAX_KEEPALIVE = 65535
IFNAMSIZ = 16  # the kernel's limit, including the terminating NUL
DEFAULT_METRICS_LISTEN = "127.0.0.1:9586"
DEFAULT_DNS_PORT = 53
DNS_PORT = 53  # of upstream servers given without a port
RESOLV_CONF = Path("/etc/resolv.conf")
# Room for 100,000 peers (about 110 bytes each with one allowed IP and an endpoint) several
# times over; still guards against pointing --config at a huge file.
MAX_CONFIG_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_PEER_SERIES = 1000
MAX_PEER_SERIES = 1_000_000

_T = TypeVar("_T")
_TOML_TYPES = (datetime.datetime, datetime.date, datetime.time)  # TOML values msgspec keeps


# ---- the file's shape: msgspec Structs, unknown keys rejected --------------------------------


class _InterfaceToml(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    private_key: str | None = None
    private_key_file: str | None = None
    listen_port: int = DEFAULT_LISTEN_PORT
    addresses: list[str] = msgspec.field(default_factory=list)
    mtu: int = DEFAULT_MTU


class _PeerToml(msgspec.Struct, forbid_unknown_fields=True):
    public_key: str
    preshared_key: str | None = None
    preshared_key_file: str | None = None
    allowed_ips: list[str] = msgspec.field(default_factory=list)
    endpoint: str | None = None
    persistent_keepalive: int | None = None
    resources: list[str] = msgspec.field(default_factory=list)


class _FilterToml(msgspec.Struct, forbid_unknown_fields=True):
    protocol: str
    ports: str | None = None


class _ResourceToml(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    address: str
    filters: list[_FilterToml] = msgspec.field(default_factory=list)


class _DnsToml(msgspec.Struct, forbid_unknown_fields=True):
    port: int = DEFAULT_DNS_PORT
    upstreams: list[str] | None = None


class _MetricsToml(msgspec.Struct, forbid_unknown_fields=True):
    listen: str = DEFAULT_METRICS_LISTEN
    max_peer_series: Annotated[int, msgspec.Meta(ge=0, le=MAX_PEER_SERIES)] = (
        DEFAULT_MAX_PEER_SERIES
    )


MIN_SOCKET_BUFFER = 64 * 1024
MAX_SOCKET_BUFFER = 1 << 30
SocketBuffer = Annotated[int, msgspec.Meta(ge=MIN_SOCKET_BUFFER, le=MAX_SOCKET_BUFFER)]


class _UdpToml(msgspec.Struct, forbid_unknown_fields=True):
    receive_buffer: SocketBuffer = DEFAULT_RCVBUF
    send_buffer: SocketBuffer = DEFAULT_SNDBUF


class _RootToml(msgspec.Struct, forbid_unknown_fields=True):
    # Sections stay untyped here and are converted one by one to collect every error.
    interface: dict[str, Any]
    peers: list[dict[str, Any]] = msgspec.field(default_factory=list)
    resources: list[dict[str, Any]] = msgspec.field(default_factory=list)
    metrics: dict[str, Any] = msgspec.field(default_factory=dict)
    dns: dict[str, Any] | None = None
    udp: dict[str, Any] = msgspec.field(default_factory=dict)
    ha: dict[str, Any] | None = None


# ---- the validated, typed configuration the rest of the code uses ----------------------------


@dataclass(frozen=True, slots=True)
class InterfaceConfig:
    name: str
    private_key: bytes = field(repr=False)
    listen_port: int
    addresses: tuple[IPInterface, ...]
    mtu: int
    # Where the key came from, if from a file (for messages); None when given inline.
    private_key_file: Path | None = None

    @property
    def public_key(self) -> bytes:
        return keys.public_key(self.private_key)


@dataclass(frozen=True, slots=True)
class PeerConfig:
    public_key: bytes
    preshared_key: bytes | None = field(repr=False)
    allowed_ips: tuple[IPNetwork, ...]
    endpoint: Endpoint | None
    persistent_keepalive: int | None
    # Names of the [[resources]] this peer may reach (only enforced when resources exist).
    resources: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class DnsConfig:
    """The DNS server for peers, on `port` of every tunnel address of the gateway."""

    port: int
    upstreams: tuple[Endpoint, ...]


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    listen: Endpoint
    # /metrics has per-peer series for this many peers (the first by stats slot); the
    # others are summed into the firezone_gw_peers_aggregated_* series.
    max_peer_series: int = DEFAULT_MAX_PEER_SERIES


@dataclass(frozen=True, slots=True)
class UdpConfig:
    """Socket buffer sizes in bytes (forced past the sysctl limits when running as root)."""

    receive_buffer: int = DEFAULT_RCVBUF
    send_buffer: int = DEFAULT_SNDBUF


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    interface: InterfaceConfig
    peers: tuple[PeerConfig, ...]
    metrics: MetricsConfig
    source: str
    udp: UdpConfig = UdpConfig()
    # No resources: no policy, every peer reaches everything routed behind the gateway.
    resources: tuple[Resource, ...] = ()
    # None: no DNS server (no [dns] table and no DNS resources).
    dns: DnsConfig | None = None
    # None: a gateway on its own (no [ha] table); see gateway/ha/settings.py.
    ha: HaConfig | None = None


class ConfigError(Exception):
    """The config is invalid; `errors` holds one `<file>: <key path>: <problem>` line each."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = tuple(errors)
        super().__init__("\n".join(errors))


# ---- entry points ----------------------------------------------------------------------------


def load_config(path: Path, *, create_private_key: bool = False) -> GatewayConfig:
    """Read and validate the config file at `path`: `read_config_file`, `parse_config`,
    `resolve_config`.

    With `create_private_key`, a missing `private_key_file` is created (mode 0600) with a new
    key, as `run` does on first start; otherwise a missing key file is an error.
    """
    text = read_config_file(path)
    with gc_paused():  # 100,000 peers are millions of objects: see gcpause.py
        parsed = parse_config(text, source=str(path))
        return resolve_config(parsed, base_dir=path.parent, create_private_key=create_private_key)


def read_config_file(path: Path) -> str:
    """The file's text (at most MAX_CONFIG_BYTES, UTF-8); ConfigError naming the file if not."""
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read config file: {exc.strerror}"]) from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError([f"{path}: config file is larger than {MAX_CONFIG_BYTES} bytes"])
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: config file is not UTF-8 (byte {exc.start})"]) from None


def parse_config_text(
    text: str, *, base_dir: Path, source: str, create_private_key: bool = False
) -> GatewayConfig:
    """Config text not read from a file, parsed and resolved (key files relative to
    `base_dir`). `source` names the file in error messages."""
    parsed = parse_config(text, source=source)
    return resolve_config(parsed, base_dir=base_dir, create_private_key=create_private_key)


def parse_config(text: str, *, source: str) -> ParsedConfig:
    """Check config text on its own: no file is read, no name resolved (pure).

    What needs the outside world is kept as written: key files, host names of endpoints, the
    DNS upstreams of /etc/resolv.conf; `resolve_config` fetches them. Raises ConfigError only
    for text that is not TOML of the right shape; other problems are collected in `errors`
    so that one run lists them all with those `resolve_config` finds.
    """
    errors = _Errors(source)
    try:
        document = tomli.loads(text)  # what msgspec.toml.decode does, with tomli: see pyproject
    except tomli.TOMLDecodeError as exc:
        raise ConfigError([f"{source}: invalid TOML: {exc}"]) from None
    try:
        root = msgspec.convert(document, _RootToml, builtin_types=_TOML_TYPES, str_keys=True)
    except msgspec.ValidationError as exc:
        errors.from_msgspec("", exc)
        raise ConfigError(errors.lines) from None

    interface_toml = errors.convert("interface", root.interface, _InterfaceToml)
    metrics_toml = errors.convert("metrics", root.metrics, _MetricsToml)
    udp_toml = errors.convert("udp", root.udp, _UdpToml)
    peer_tomls = [errors.convert(f"peers[{i}]", p, _PeerToml) for i, p in enumerate(root.peers)]
    resources = _validate_resources(root.resources, errors)

    interface = None if interface_toml is None else _validate_interface(interface_toml, errors)
    checker = _PeerChecker(errors)
    peers = [None if p is None else checker.check(i, p) for i, p in enumerate(peer_tomls)]
    _check_grants(peer_tomls, {r.name for r in resources}, errors)
    dns_resources = any(r.pattern is not None for r in resources)
    if dns_resources:
        _check_proxy_ranges(peers, errors)
    dns = None
    if root.dns is not None or dns_resources:
        dns = _validate_dns(root.dns or {}, interface, errors)
    ha = None if root.ha is None else parse_ha(root.ha, errors.add)
    metrics_listen = None
    max_peer_series = DEFAULT_MAX_PEER_SERIES
    if metrics_toml is not None:
        max_peer_series = metrics_toml.max_peer_series
        listen = _parse_endpoint(metrics_toml.listen, "metrics.listen", errors)
        metrics_listen = None if listen is None else _Written(listen, metrics_toml.listen)
    return ParsedConfig(
        source=source,
        errors=tuple(errors.lines),
        interface=interface,
        peers=tuple(peers),
        resources=tuple(resources),
        dns=dns,
        metrics_listen=metrics_listen,
        max_peer_series=max_peer_series,
        udp=None if udp_toml is None else UdpConfig(udp_toml.receive_buffer, udp_toml.send_buffer),
        ha=ha,
    )


def resolve_config(
    parsed: ParsedConfig, *, base_dir: Path, create_private_key: bool = False
) -> GatewayConfig:
    """What `parse_config` left as written, fetched: key files (relative to `base_dir`;
    with `create_private_key` a missing private key file is made), host names resolved
    (getaddrinfo), the upstreams of /etc/resolv.conf when [dns] names none.

    Raises ConfigError listing the parse's problems and these.
    """
    errors = _Errors(parsed.source)
    errors.lines.extend(parsed.errors)
    draft = parsed.interface
    private_key = None
    if draft is not None:
        private_key = _read_secret(
            errors,
            "interface",
            "private_key",
            draft.private_key,
            base_dir,
            create=create_private_key,
        )
    own_public_key = None if private_key is None else keys.public_key(private_key)
    peers = [_resolve_peer(p, base_dir, own_public_key, errors) for p in parsed.peers]
    dns = None if parsed.dns is None else _resolve_dns(parsed.dns, errors)
    metrics_listen = None
    if parsed.metrics_listen is not None:
        metrics_listen = _resolve(parsed.metrics_listen, "metrics.listen", errors)
    ha = None if parsed.ha is None else resolve_ha(parsed.ha, base_dir, private_key, errors.add)
    if (
        errors.lines
        or draft is None
        or private_key is None
        or metrics_listen is None
        or parsed.udp is None
        or None in peers
        or (parsed.dns is not None and dns is None)
    ):
        raise ConfigError(errors.lines)
    key_file = draft.private_key
    interface = InterfaceConfig(
        name=draft.name,
        private_key=private_key,
        listen_port=draft.listen_port,
        addresses=draft.addresses,
        mtu=draft.mtu,
        private_key_file=base_dir / key_file.name if isinstance(key_file, KeyFile) else None,
    )
    return GatewayConfig(
        interface=interface,
        peers=tuple(p for p in peers if p is not None),
        metrics=MetricsConfig(metrics_listen, parsed.max_peer_series),
        source=parsed.source,
        udp=parsed.udp,
        resources=parsed.resources,
        dns=dns,
        ha=ha,
    )


# ---- what parse_config leaves for resolve_config ---------------------------------------------


@dataclass(frozen=True, slots=True)
class KeyFile:
    """A key to read from a file: `name` as written, relative to the config file's folder."""

    name: str


Secret = bytes | KeyFile  # a key given inline (decoded) or in a file


@dataclass(frozen=True, slots=True)
class _Written:
    """An endpoint as parsed (its host may be a name) and as written (for messages)."""

    endpoint: Endpoint
    text: str


@dataclass(frozen=True, slots=True)
class InterfaceDraft:
    name: str
    private_key: Secret
    listen_port: int
    addresses: tuple[IPInterface, ...]
    mtu: int


@dataclass(frozen=True, slots=True)
class PeerDraft:
    index: int  # in the file, for messages
    public_key: bytes
    preshared_key: Secret | None = field(repr=False)
    allowed_ips: tuple[IPNetwork, ...]
    endpoint: _Written | None
    persistent_keepalive: int | None
    resources: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class DnsDraft:
    port: int
    upstreams: tuple[Endpoint, ...] | None  # None: the name servers of /etc/resolv.conf


@dataclass(frozen=True, slots=True)
class ParsedConfig:
    """Config text checked on its own (`parse_config`); `resolve_config` completes it."""

    source: str
    errors: tuple[str, ...]  # `<file>: <key path>: <problem>` lines found so far
    interface: InterfaceDraft | None
    peers: tuple[PeerDraft | None, ...]  # None: the peer has errors
    resources: tuple[Resource, ...]
    dns: DnsDraft | None
    metrics_listen: _Written | None
    max_peer_series: int
    udp: UdpConfig | None
    ha: HaDraft | None = None  # [ha], its key file not read yet


# ---- validation ------------------------------------------------------------------------------


class _Errors:
    """Collects `<file>: <key path>: <problem>` lines."""

    _MSGSPEC_AT = re.compile(r"^(?P<msg>.*?)(?: - at `\$(?P<at>[^`]*)`)?$", re.DOTALL)
    _MSGSPEC_FIELD = re.compile(r"^Object (?P<what>contains unknown|missing required) field `")

    def __init__(self, source: str) -> None:
        self.source = source
        self.lines: list[str] = []

    def add(self, path: str, problem: str) -> None:
        self.lines.append(
            f"{self.source}: {path}: {problem}" if path else f"{self.source}: {problem}"
        )

    def from_msgspec(self, prefix: str, exc: msgspec.ValidationError) -> None:
        match = self._MSGSPEC_AT.match(str(exc))
        msg, at = (match["msg"], match["at"] or "") if match else (str(exc), "")
        path = (prefix + at).removeprefix(".")
        kind = self._MSGSPEC_FIELD.match(msg)
        if kind:
            key = msg[kind.end() :].rstrip("`")
            path = f"{path}.{key}" if path else key
            msg = "unknown key" if kind["what"] == "contains unknown" else "missing required key"
        self.add(path, msg)

    def convert(self, path: str, raw: object, kind: type[_T]) -> _T | None:
        try:
            return msgspec.convert(raw, kind)
        except msgspec.ValidationError as exc:
            self.from_msgspec(path, exc)
            return None


def _validate_interface(toml: _InterfaceToml, errors: _Errors) -> InterfaceDraft | None:
    start = len(errors.lines)
    name_bytes = toml.name.encode()
    if not 0 < len(name_bytes) < IFNAMSIZ:
        errors.add("interface.name", f"expected 1..{IFNAMSIZ - 1} bytes, got {len(name_bytes)}")
    elif toml.name in {".", ".."} or any(
        c in "/:" or c.isspace() or not c.isprintable() for c in toml.name
    ):
        errors.add("interface.name", f"{toml.name!r} is not a valid interface name")

    private_key = _secret(
        errors, "interface", "private_key", toml.private_key, toml.private_key_file
    )
    if private_key is None and toml.private_key is None and toml.private_key_file is None:
        errors.add("interface", "one of private_key or private_key_file is required")

    _check_range("interface.listen_port", toml.listen_port, 1, MAX_PORT, errors)
    _check_range("interface.mtu", toml.mtu, MIN_MTU, MAX_MTU, errors)

    addresses: list[IPInterface] = []
    for i, text in enumerate(toml.addresses):
        try:
            addresses.append(parse_interface(text))
        except NetworkError:
            errors.add(
                f"interface.addresses[{i}]",
                f"expected an IP address with prefix length such as 100.64.0.1/10, got {text!r}",
            )

    if len(errors.lines) > start or private_key is None:
        return None
    return InterfaceDraft(
        name=toml.name,
        private_key=private_key,
        listen_port=toml.listen_port,
        addresses=tuple(addresses),
        mtu=toml.mtu,
    )


class _PeerChecker:
    """Validates peers one by one, remembering keys and prefixes to catch duplicates."""

    def __init__(self, errors: _Errors) -> None:
        self.errors = errors
        self.key_owner: dict[bytes, int] = {}
        self.prefix_owner: dict[IPNetwork, int] = {}

    def check(self, index: int, toml: _PeerToml) -> PeerDraft | None:
        path = f"peers[{index}]"
        start = len(self.errors.lines)
        public_key = self._public_key(index, toml.public_key)
        psk = _secret(
            self.errors, path, "preshared_key", toml.preshared_key, toml.preshared_key_file
        )
        allowed_ips = [
            network
            for i, text in enumerate(toml.allowed_ips)
            if (network := self._allowed_ip(index, i, text)) is not None
        ]
        endpoint = None
        if toml.endpoint is not None:
            parsed = _parse_endpoint(toml.endpoint, f"{path}.endpoint", self.errors)
            endpoint = None if parsed is None else _Written(parsed, toml.endpoint)
        if toml.persistent_keepalive is not None:
            _check_range(
                f"{path}.persistent_keepalive",
                toml.persistent_keepalive,
                1,
                MAX_KEEPALIVE,
                self.errors,
            )
        if len(self.errors.lines) > start or public_key is None:
            return None
        return PeerDraft(
            index=index,
            public_key=public_key,
            preshared_key=psk,
            allowed_ips=tuple(allowed_ips),
            endpoint=endpoint,
            persistent_keepalive=toml.persistent_keepalive,
            resources=tuple(dict.fromkeys(toml.resources)),
        )

    def _public_key(self, index: int, text: str) -> bytes | None:
        path = f"peers[{index}].public_key"
        try:
            key = keys.decode_key(text)
        except keys.KeyFormatError as exc:
            self.errors.add(path, str(exc))
            return None
        owner = self.key_owner.setdefault(key, index)
        if owner != index:
            self.errors.add(path, f"duplicate: the same key is already used by peers[{owner}]")
            return None
        return key

    def _allowed_ip(self, index: int, position: int, text: str) -> IPNetwork | None:
        path = f"peers[{index}].allowed_ips[{position}]"
        network = _parse_network(text, path, self.errors)
        if network is None:
            return None
        owner = self.prefix_owner.get(network)
        if owner is not None:
            where = "earlier in this peer" if owner == index else f"to peers[{owner}]"
            self.errors.add(path, f"{network} is already given {where}")
            return None
        self.prefix_owner[network] = index
        return network


def _validate_resources(raw: list[dict[str, Any]], errors: _Errors) -> list[Resource]:
    resources: list[Resource] = []
    owner: dict[str, int] = {}
    for index, entry in enumerate(raw):
        path = f"resources[{index}]"
        toml = errors.convert(path, entry, _ResourceToml)
        if toml is None:
            continue
        start = len(errors.lines)
        network = None
        if not 1 <= len(toml.name) <= MAX_NAME_LENGTH:
            errors.add(
                f"{path}.name", f"expected 1..{MAX_NAME_LENGTH} characters, got {len(toml.name)}"
            )
        elif owner.setdefault(toml.name, index) != index:
            errors.add(
                f"{path}.name",
                f"duplicate: {toml.name!r} is already the name of resources[{owner[toml.name]}]",
            )
        try:
            network = parse_resource_address(toml.address)
        except ValueError as exc:
            errors.add(f"{path}.address", str(exc))
        filters = []
        for position, item in enumerate(toml.filters):
            try:
                filters.append(parse_filter(item.protocol, item.ports))
            except ValueError as exc:
                errors.add(f"{path}.filters[{position}]", f"{toml.name}: {exc}")
        if len(errors.lines) == start and network is not None:
            resources.append(Resource(toml.name, network, tuple(filters)))
    return resources


def _validate_dns(
    raw: dict[str, Any], interface: InterfaceDraft | None, errors: _Errors
) -> DnsDraft | None:
    toml = errors.convert("dns", raw, _DnsToml)
    if toml is None:
        return None
    start = len(errors.lines)
    _check_range("dns.port", toml.port, 1, MAX_PORT, errors)
    if interface is not None and not interface.addresses:
        errors.add("dns", "the DNS server listens on the interface addresses, but there are none")
    upstreams = None
    if toml.upstreams is not None:
        upstreams = _parse_upstreams(toml.upstreams, "dns.upstreams", errors)
    if len(errors.lines) > start:
        return None
    return DnsDraft(port=toml.port, upstreams=upstreams)


def _parse_upstreams(texts: list[str], path: str, errors: _Errors) -> tuple[Endpoint, ...]:
    upstreams = []
    for position, text in enumerate(texts):
        upstream = _parse_upstream(text)
        if upstream is None:
            errors.add(
                f"{path}[{position}]",
                f"expected an IP address, IP:port or [IPv6]:port, got {text!r}",
            )
        else:
            upstreams.append(upstream)
    if not texts:
        errors.add(path, "no upstream DNS server: give dns.upstreams")
    return tuple(upstreams)


def _resolv_conf_nameservers() -> list[str]:
    import dns.resolver  # noqa: PLC0415 - ~0.5 s to import: only a config without dns.upstreams

    try:
        resolver = dns.resolver.Resolver(filename=str(RESOLV_CONF))
    except dns.resolver.NoResolverConfiguration:
        return []
    return [str(server) for server in resolver.nameservers]


def _parse_upstream(text: str) -> Endpoint | None:
    """A numeric upstream: `IP`, `IPv4:port` or `[IPv6]:port` (a name would need a resolver;
    a scope id has no place in the forwarder's keys)."""
    if "%" in text:
        return None
    try:
        return str(ipaddress.ip_address(text)), DNS_PORT
    except ValueError:
        pass
    try:
        return parse_endpoint(text, numeric=True)
    except EndpointError:
        return None


def _check_grants(peer_tomls: list[_PeerToml | None], names: set[str], errors: _Errors) -> None:
    for index, toml in enumerate(peer_tomls):
        for position, name in enumerate(toml.resources if toml else ()):
            if name not in names:
                errors.add(
                    f"peers[{index}].resources[{position}]",
                    f"no resource is named {name!r}",
                )


def _check_proxy_ranges(peers: list[PeerDraft | None], errors: _Errors) -> None:
    """With DNS resources, proxy addresses stand for names (the crypto process translates
    packets to them): a peer's address there would be taken for a proxy address, so its
    packets would be translated or refused. A network around a range (a peer routed
    100.64.0.0/10 or a default route) is fine: the proxy addresses are matched first."""
    for index, peer in enumerate(peers):
        if peer is None:  # its errors are reported already
            continue
        for position, network in enumerate(peer.allowed_ips):
            proxy = proxy_range_holding(network)
            if proxy is not None:
                errors.add(
                    f"peers[{index}].allowed_ips[{position}]",
                    f"{network} of peer {_short_key(peer.public_key)} lies in the DNS proxy "
                    f"range {proxy}, whose addresses stand for DNS resource names",
                )


def _short_key(key: bytes) -> str:
    """A public key as wireguard-go names peers in its logs: `AbCd…WxYz`."""
    text = keys.encode_key(key)
    return f"{text[:4]}…{text[-5:-1]}"


def _secret(
    errors: _Errors, table: str, key: str, inline: str | None, file: str | None
) -> Secret | None:
    """A key given either inline (base64) or as `<key>_file`, never both; None if neither."""
    if inline is not None and file is not None:
        errors.add(table, f"give either {key} or {key}_file, not both")
        return None
    if file is not None:
        return KeyFile(file)
    if inline is None:
        return None
    try:
        return keys.decode_key(inline)
    except keys.KeyFormatError as exc:
        errors.add(f"{table}.{key}", str(exc))
        return None


# ---- the resolve step: key files, host names, /etc/resolv.conf -------------------------------


def _read_secret(  # noqa: PLR0913 - one helper for the private and preshared keys
    errors: _Errors, table: str, key: str, secret: Secret, base_dir: Path, *, create: bool = False
) -> bytes | None:
    """The key itself: `secret` if given inline, else read from its file (made if `create`)."""
    if isinstance(secret, bytes):
        return secret
    file = base_dir / secret.name
    try:
        return keys.ensure_private_key_file(file) if create else keys.read_key_file(file)
    except keys.KeyFormatError as exc:
        errors.add(f"{table}.{key}", str(exc))
    except keys.KeyFileMissingError as exc:
        command = "genkey" if key == "private_key" else "genpsk"
        errors.add(
            f"{table}.{key}_file",
            f"{exc}; create it with: (umask 077; firezone-gw {command} > {file})",
        )
    except keys.KeyFileError as exc:
        errors.add(f"{table}.{key}_file", str(exc))
    except OSError as exc:  # only when creating the file
        errors.add(f"{table}.{key}_file", f"cannot create key file {file}: {exc.strerror}")
    return None


def _resolve_peer(
    draft: PeerDraft | None, base_dir: Path, own_public_key: bytes | None, errors: _Errors
) -> PeerConfig | None:
    if draft is None:
        return None
    path = f"peers[{draft.index}]"
    start = len(errors.lines)
    if draft.public_key == own_public_key:
        errors.add(f"{path}.public_key", "is the gateway's own public key")
    psk = None
    if draft.preshared_key is not None:
        psk = _read_secret(errors, path, "preshared_key", draft.preshared_key, base_dir)
    endpoint = None
    if draft.endpoint is not None:
        endpoint = _resolve(draft.endpoint, f"{path}.endpoint", errors)
    if len(errors.lines) > start:
        return None
    return PeerConfig(
        public_key=draft.public_key,
        preshared_key=psk,
        allowed_ips=draft.allowed_ips,
        endpoint=endpoint,
        persistent_keepalive=draft.persistent_keepalive,
        resources=draft.resources,
    )


def _resolve_dns(draft: DnsDraft, errors: _Errors) -> DnsConfig | None:
    upstreams = draft.upstreams
    if upstreams is None:
        start = len(errors.lines)
        path = f"dns.upstreams (from {RESOLV_CONF})"
        upstreams = _parse_upstreams(_resolv_conf_nameservers(), path, errors)
        if len(errors.lines) > start:
            return None
    return DnsConfig(port=draft.port, upstreams=upstreams)


def _resolve(written: _Written, path: str, errors: _Errors) -> Endpoint | None:
    """A numeric endpoint: names are resolved here, so only addresses reach the data plane."""
    try:
        return resolve_endpoint(written.endpoint)
    except EndpointError as exc:
        errors.add(path, f"{exc} (from {written.text!r})")
        return None


def _check_range(path: str, value: int, low: int, high: int, errors: _Errors) -> None:
    if not low <= value <= high:
        errors.add(path, f"expected an integer in {low}..{high}, got {value}")


def _parse_network(text: str, path: str, errors: _Errors) -> IPNetwork | None:
    try:
        return parse_network(text)
    except HostBitsSet as exc:
        errors.add(path, str(exc))
    except NetworkError:
        errors.add(path, f"expected an IP network such as 100.64.0.2/32, got {text!r}")
    return None


def _parse_endpoint(text: str, path: str, errors: _Errors) -> Endpoint | None:
    """`host:port` or `[IPv6]:port`; a host name stays a name until `_resolve`."""
    try:
        return parse_endpoint(text)
    except EndpointError as exc:
        errors.add(path, f"expected host:port or [IPv6]:port, got {text!r} ({exc})")
        return None
