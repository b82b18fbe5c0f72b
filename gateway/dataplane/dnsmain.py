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
as names are asked for again. A restarted crypto process says so on the mappings socket: the
live mappings go to it again before any answer from the cache. Only peers are answered (the
sockets are bound to the TUN device; sources by the peers' allowed IPs, as the crypto process
reports them after `wg set`).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import selectors
import socket
import time
from collections import Counter
from collections.abc import Hashable, Mapping

from gateway.config import GatewayConfig
from gateway.dataplane.children import report_ready
from gateway.dataplane.heartbeat import Heartbeat
from gateway.dataplane.mappings import MappingSender
from gateway.dns.forwarder import Forwarder
from gateway.dns.peers import PeerDirectory
from gateway.dns.resources import ResourceAnswers
from gateway.dns.server import DnsServer
from gateway.nat.handler import grants_by_key
from gateway.telemetry import stats as st

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


def build_server(config: GatewayConfig, mappings: MappingSender | None) -> DnsServer:
    """The DnsServer for `config` (which must have a DNS server): listening on each tunnel
    address at dns.port for the peers, DNS resources answered for the peers granted them."""
    dns = config.dns
    if dns is None:
        raise ValueError("the config has no DNS server")
    forwarder = Forwarder(dns.upstreams)
    peers = PeerDirectory((p.public_key, p.allowed_ips) for p in config.peers)
    patterns = [(i, r.pattern) for i, r in enumerate(config.resources) if r.pattern is not None]
    resources = None
    if patterns:
        by_key = grants_by_key(
            config.resources, [(p.public_key, p.resources) for p in config.peers]
        )
        grants: Mapping[Hashable, frozenset[int]] = {key: ids for key, ids in by_key.items()}
        resources = ResourceAnswers(patterns, grants, peers.peer_of, forwarder)
    if mappings is not None:
        mappings.on_peers = peers.replace
        if resources is not None:
            table, sender = resources, mappings

            def resend() -> None:  # a new crypto process has none of them
                for mapping in table.live_mappings():
                    sender.send(mapping)

            mappings.on_started = resend
    listen = [(str(address.ip), dns.port) for address in config.interface.addresses]
    return DnsServer(
        forwarder,
        listen,
        resources,
        mappings,
        device=config.interface.name,
        peer_of=peers.peer_of,
    )


class DnsCounterSync:
    """Copies the server's counters into the dns process's block as deltas."""

    def __init__(self, block: memoryview) -> None:
        self.block = block
        self._last: Counter[str] = Counter()

    def sync(self, server: DnsServer, mappings: MappingSender | None) -> None:
        now: Counter[str] = Counter(server.forwarder.counters)
        if mappings is not None:
            now["proxy_mappings"] = mappings.sent
            now["proxy_mapping_unacknowledged"] = mappings.unacknowledged
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
    sender = None if mappings is None else MappingSender(mappings)
    server = build_server(config, sender)
    if sender is not None:
        sender.attach(asyncio.get_running_loop())
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
        if server.resources is not None:
            server.resources.expire(time.monotonic())
        await asyncio.sleep(STATS_INTERVAL)
