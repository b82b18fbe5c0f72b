"""The DNS process (`fzgw-dns`): the DnsServer on every tunnel address, in its own asyncio loop.

The supervisor forks it only when the config has a DNS server (`GatewayConfig.dns`). It owns
the forwarder's pending queries and the proxy address table (`ResourceAnswers`); peers are
told apart by their source address through the config's allowed IPs. Each new proxy mapping
goes to the crypto process (gateway/dataplane/mappings.py) and is acknowledged before the
answer that hands the proxy address out. No keys here: the supervisor zeroes them before
calling `run_dns`.

Heartbeat: the event loop's selector marks the process asleep while it waits, and a 1 s tick
beats and copies the counters into the process's stats block (as deltas: the block outlives
a restarted process). Crash: the supervisor restarts it; pending queries are lost (clients
retry) and proxy addresses are handed out afresh, overwriting the crypto process's mappings
as names are asked for again.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import selectors
import socket
from collections import Counter
from collections.abc import Hashable, Mapping

from gateway.config import GatewayConfig
from gateway.dataplane.children import report_ready
from gateway.dataplane.heartbeat import Heartbeat
from gateway.dataplane.mappings import MappingSender
from gateway.dns.forwarder import Forwarder
from gateway.dns.resources import ProxyMapping, ResourceAnswers
from gateway.dns.server import DnsServer
from gateway.nat.handler import grants_by_key
from gateway.telemetry import stats as st
from gateway.wireguard.allowedips import AllowedIPs

log = logging.getLogger(__name__)

STATS_INTERVAL = 1.0


class HeartbeatSelector(selectors.EpollSelector):
    """asyncio's selector, telling the heartbeat when the loop waits for its sockets."""

    def __init__(self, heartbeat: Heartbeat) -> None:
        super().__init__()
        self._heartbeat = heartbeat

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        self._heartbeat.asleep(True)
        try:
            return super().select(timeout)
        finally:
            self._heartbeat.asleep(False)


def build_server(config: GatewayConfig, on_mapping: CountingSender | None) -> DnsServer:
    """The DnsServer for `config` (which must have a DNS server): listening on each tunnel
    address at dns.port, DNS resources answered for the peers granted them."""
    dns = config.dns
    if dns is None:
        raise ValueError("the config has no DNS server")
    forwarder = Forwarder(dns.upstreams)
    patterns = [(i, r.pattern) for i, r in enumerate(config.resources) if r.pattern is not None]
    resources = None
    if patterns:
        owners: AllowedIPs[bytes] = AllowedIPs()
        for peer in config.peers:
            for network in peer.allowed_ips:
                owners.insert(network, peer.public_key)

        def peer_of(address: str) -> Hashable | None:
            try:
                return owners.lookup_ip(ipaddress.ip_address(address))
            except ValueError:
                return None

        by_key = grants_by_key(
            config.resources, [(p.public_key, p.resources) for p in config.peers]
        )
        grants: Mapping[Hashable, frozenset[int]] = {key: ids for key, ids in by_key.items()}
        resources = ResourceAnswers(patterns, grants, peer_of, forwarder)
    listen = [(str(address.ip), dns.port) for address in config.interface.addresses]
    return DnsServer(
        forwarder,
        listen,
        resources,
        on_mapping=None if on_mapping is None else on_mapping.send_mapping,
    )


class CountingSender:
    """Counts what it sends; `send_mapping` is the DnsServer's on_mapping callback."""

    def __init__(self, sender: MappingSender) -> None:
        self.sender = sender
        self.sent = 0

    def send_mapping(self, mapping: ProxyMapping) -> None:
        self.sent += 1
        self.sender.send(mapping)


class DnsCounterSync:
    """Copies the server's counters into the dns process's block as deltas."""

    def __init__(self, block: memoryview) -> None:
        self.block = block
        self._last: Counter[str] = Counter()

    def sync(self, server: DnsServer, mappings: CountingSender | None) -> None:
        now: Counter[str] = Counter(server.forwarder.counters)
        if mappings is not None:
            now["proxy_mappings"] = mappings.sent
            now["proxy_mapping_unacknowledged"] = mappings.sender.unacknowledged
        block = self.block
        for index, name in enumerate(st.DNS_COUNTER_NAMES):
            if name in st.DNS_GAUGES:
                continue
            delta = now[name] - self._last[name]
            if delta > 0:
                block[st.DNS_BASE + index] += delta
        self._last = now
        in_flight = st.DNS_BASE + st.DNS_COUNTER_NAMES.index("in_flight")
        block[in_flight] = server.forwarder.in_flight


def run_dns(
    config: GatewayConfig, mappings: socket.socket | None, block: memoryview, heartbeat: Heartbeat
) -> None:
    """The DNS child's whole life (never returns)."""
    loop = asyncio.SelectorEventLoop(HeartbeatSelector(heartbeat))
    asyncio.set_event_loop(loop)
    loop.run_until_complete(_serve(config, mappings, block, heartbeat))


async def _serve(
    config: GatewayConfig, mappings: socket.socket | None, block: memoryview, heartbeat: Heartbeat
) -> None:
    sender = None if mappings is None else CountingSender(MappingSender(mappings))
    server = build_server(config, sender)
    try:
        await server.start()
    except OSError as exc:
        hint = ""
        if exc.errno == errno.EACCES:
            hint = " (a port below 1024 needs root or CAP_NET_BIND_SERVICE)"
        where = ", ".join(f"{host}:{port}" for host, port in server.listen)
        log.error("DNS server cannot listen on %s: %s%s", where, exc.strerror, hint)
        raise
    report_ready()
    counters = DnsCounterSync(block)
    while True:
        heartbeat.beat()
        counters.sync(server, sender)
        await asyncio.sleep(STATS_INTERVAL)
