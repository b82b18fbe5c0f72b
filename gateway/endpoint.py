"""UDP endpoints: the one (host, port) type with its parser, formatter and name resolver.

The syntax is wg-quick's: `host:port`, or `[IPv6]:port`. Only numeric addresses ever reach
the data plane: the ring framing has no room for a name and a DNS lookup on the send path
would stall the crypto process. So names are resolved once, when the config is loaded (a
SIGHUP reload loads it again), and the UAPI, whose client `wg` resolves names itself, takes
numeric endpoints only. Scoped IPv6 addresses (fe80::1%eth0) are refused everywhere: neither
the ring framing nor the UDP process carries a scope id.

A datagram's sender comes with the local address it arrived at (`StickyEndpoint`), so that
replies leave from that address, as wireguard-go's "sticky sockets" do.
"""

from __future__ import annotations

import ipaddress
import socket

Endpoint = tuple[str, int]
MAX_PORT = 65535
_IPV6 = 6


class StickyEndpoint(tuple[str, int]):
    """A sender's (host, port) that remembers the local address its datagram arrived at:
    replies to it leave from there (wireguard-go's StdNetEndpoint with its src).

    It compares and hashes as the plain (host, port) tuple, so the sans-I/O core keys,
    compares and formats it like any endpoint, and the core's roaming (a peer's endpoint
    becomes the source of its latest authenticated datagram) carries the local address along.
    An endpoint set by the config or `wg` is a plain tuple: setting one forgets the address.
    `local` is the packed address (4 bytes for IPv4, also when it arrived IPv4-mapped on a
    dual-stack socket; 16 for IPv6).
    """

    local: bytes

    def __new__(cls, host: str, port: int, local: bytes) -> StickyEndpoint:
        endpoint = super().__new__(cls, (host, port))
        endpoint.local = local
        return endpoint


def local_address(endpoint: Endpoint) -> bytes:
    """The packed local address replies to `endpoint` leave from; b"" when the kernel chooses."""
    return endpoint.local if type(endpoint) is StickyEndpoint else b""


class EndpointError(ValueError):
    """Text that is not an endpoint, or a name that does not resolve; says what was wrong."""


def parse_endpoint(text: str, *, min_port: int = 1, numeric: bool = False) -> Endpoint:
    """`host:port` or `[IPv6]:port` -> (host, port); a numeric host comes back canonical.

    With `numeric`, the host must be an IP address (IPv4 bare, IPv6 in brackets).
    """
    bracketed = text.startswith("[")
    if bracketed:
        host, sep, port_text = text[1:].partition("]:")
    else:
        host, sep, port_text = text.rpartition(":")
    if not sep:
        raise EndpointError("no port")
    if "%" in host:
        raise EndpointError("scoped IPv6 addresses (with %zone) are not supported")
    if not host or any(c.isspace() for c in host):
        raise EndpointError("no host")
    if not bracketed and ":" in host:
        raise EndpointError("put an IPv6 address in brackets")
    if not (port_text.isascii() and port_text.isdigit()) or not (
        min_port <= int(port_text) <= MAX_PORT
    ):
        raise EndpointError(f"port must be {min_port}..{MAX_PORT}")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        if bracketed:
            raise EndpointError(f"{host!r} in brackets is not an IPv6 address") from None
        if numeric:
            raise EndpointError(f"{host!r} is not an IP address") from None
        return host, int(port_text)
    if bracketed != (address.version == _IPV6):
        raise EndpointError("IPv6 needs brackets, IPv4 none")
    return str(address), int(port_text)


def format_endpoint(endpoint: Endpoint) -> str:
    host, port = endpoint
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def is_numeric(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return "%" not in host


def resolve_endpoint(endpoint: Endpoint) -> Endpoint:
    """The endpoint with its host name replaced by the first address it resolves to.

    Takes the first unscoped result of getaddrinfo, as `wg` does. May block on DNS: call it
    only while loading the config, never from the data plane.
    """
    host, port = endpoint
    if is_numeric(host):
        return endpoint
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM, proto=socket.IPPROTO_UDP)
    except OSError as exc:  # socket.gaierror
        raise EndpointError(f"cannot resolve {host!r}: {exc.strerror}") from None
    except ValueError:  # NUL or an over-long label, from the IDNA codec
        raise EndpointError(f"{host!r} is not a valid host name") from None
    for family, _, _, _, sockaddr in infos:
        if any(sockaddr[3:]):  # IPv6 with a scope id (link-local): the rings carry none
            continue
        if family in (socket.AF_INET, socket.AF_INET6):
            address = str(sockaddr[0]).partition("%")[0]
            return str(ipaddress.ip_address(address)), port
    raise EndpointError(f"{host!r} resolves to no usable IPv4 or IPv6 address")
