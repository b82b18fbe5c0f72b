"""The test bed's address plan and its clients: who sits where, with which keys.

    client_i 10.201.i.2/30 ─veth─ 10.201.i.1/30 gateway 10.88.0.1/24 ─veth─ 10.88.0.2/24 resource
    inside the tunnel: gateway 10.77.0.1/24 + fd00:77::1/64, client_i 10.77.0.(i+2) + fd00:77::(i+2)

Pure data: nothing here touches the network, so config and topology code share one plan.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from testbed.wgpeer import wg_genkey, wg_pubkey

TUNNEL_MTU = 1280
LISTEN_PORT = 51820
GATEWAY_TUNNEL_ADDR = "10.77.0.1"
TUNNEL_NET = "10.77.0.0/24"
RESOURCE_NET = "10.88.0.0/24"
GATEWAY_RESOURCE_ADDR = "10.88.0.1"
RESOURCE_ADDR = "10.88.0.2"
GATEWAY_TUNNEL_ADDR6 = "fd00:77::1"
TUNNEL_NET6 = "fd00:77::/64"
RESOURCE_NET6 = "fd00:88::/64"
GATEWAY_RESOURCE_ADDR6 = "fd00:88::1"
RESOURCE_ADDR6 = "fd00:88::2"
GATEWAY_ADDRESSES = (f"{GATEWAY_TUNNEL_ADDR}/24", f"{GATEWAY_TUNNEL_ADDR6}/64")
CLIENT_LISTEN_BASE = 51900
IPERF_BASE_PORT = 5201
MAX_CLIENTS = 8


@dataclass(frozen=True)
class ClientOptions:
    """How one client differs from the plain client (the defaults)."""

    mtu: int = TUNNEL_MTU
    # The gateway's config names this client's endpoint, so the gateway can initiate.
    gateway_knows_endpoint: bool = False
    # False: the gateway's config does not list this client's key at all.
    known_to_gateway: bool = True
    # Use these tunnel addresses instead of the ones the gateway allows (spoofing).
    source_addrs: tuple[str, str] | None = None
    # Wait for this client's handshake and ping before the topology is handed out.
    wait_ready: bool = True


@dataclass(frozen=True)
class ClientSpec:
    index: int
    tunnel_addr: str
    underlay_addr: str
    gateway_underlay_addr: str
    private_key: str
    public_key: str
    tunnel_addr6: str = ""
    options: ClientOptions = field(default_factory=ClientOptions)

    @property
    def iperf_port(self) -> int:
        return IPERF_BASE_PORT + self.index

    @property
    def listen_port(self) -> int:
        return CLIENT_LISTEN_BASE + self.index

    @property
    def endpoint(self) -> str:
        """Where the gateway reaches this client's wireguard-go."""
        return f"{self.underlay_addr}:{self.listen_port}"

    @property
    def allowed_ips(self) -> list[str]:
        """What the gateway allows this client to send from."""
        return [f"{self.tunnel_addr}/32", f"{self.tunnel_addr6}/128"]

    @property
    def interface_addrs(self) -> tuple[str, str]:
        """The (IPv4, IPv6) addresses the client really uses inside the tunnel."""
        return self.options.source_addrs or (self.tunnel_addr, self.tunnel_addr6)


def client_specs(count: int, options: Sequence[ClientOptions] = ()) -> list[ClientSpec]:
    """Addresses and fresh keys for `count` clients (one /30 underlay link each).

    `options[i]` applies to client i; clients without an entry get the defaults.
    """
    if not 1 <= count <= MAX_CLIENTS:
        raise ValueError(f"clients must be 1..{MAX_CLIENTS}, got {count}")
    if len(options) > count:
        raise ValueError(f"{len(options)} client options for {count} clients")
    specs = []
    for i in range(count):
        key = wg_genkey()
        specs.append(
            ClientSpec(
                index=i,
                tunnel_addr=f"10.77.0.{i + 2}",
                underlay_addr=f"10.201.{i}.2",
                gateway_underlay_addr=f"10.201.{i}.1",
                private_key=key,
                public_key=wg_pubkey(key),
                tunnel_addr6=f"fd00:77::{i + 2:x}",
                options=options[i] if i < len(options) else ClientOptions(),
            )
        )
    return specs
