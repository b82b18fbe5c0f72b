"""Prometheus text exposition of a StatsSnapshot, and the /metrics /healthz /readyz server.

Per-peer names follow the widely used WireGuard exporter (mdlayher/wireguard_exporter):
`wireguard_peer_receive_bytes_total`, `wireguard_peer_transmit_bytes_total`,
`wireguard_peer_last_handshake_seconds`, labelled by `device` and base64 `public_key`.
Gateway-wide figures are `firezone_gw_*`. Units are base units (bytes, seconds, ratios).
Per-peer series cover at most `[metrics] max_peer_series` peers (the first by stats slot,
so the set is stable between scrapes); `firezone_gw_peers` counts all of them and
`firezone_gw_peers_aggregated_{bytes,packets}` (gauges: the set they sum over can change)
hold the sums over the peers without series of their own.

The server runs in threads of the supervisor: one accepts, one serves each connection (at
most MAX_CONNECTIONS, each closed REQUEST_DEADLINE_SECONDS after accept). A handler that
fails takes only its own connection down.
"""

from __future__ import annotations

import base64
import contextlib
import http.server
import io
import ipaddress
import logging
import os
import selectors
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gateway.endpoint import Endpoint, EndpointError, parse_endpoint, resolve_endpoint
from gateway.telemetry import ha_status
from gateway.telemetry import stats as st
from gateway.telemetry.stats import StatsSnapshot

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer, WriteableBuffer

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
DEFAULT_LISTEN = "127.0.0.1:9586"
REQUEST_DEADLINE_SECONDS = 5.0  # from accept to the last byte of the answer
MAX_CONNECTIONS = 64
MAX_REQUEST_BYTES = 16 << 10

Labels = tuple[tuple[str, str], ...]
ReadyCheck = Callable[[], tuple[bool, str]]


@dataclass(slots=True)
class _Family:
    name: str
    kind: str  # counter | gauge
    help: str
    samples: list[tuple[Labels, float | int]] = field(default_factory=list)

    def add(self, value: float | int, **labels: str) -> None:
        self.samples.append((tuple(labels.items()), value))


def render(snapshot: StatsSnapshot, *, device: str) -> str:
    """The exposition text for one snapshot; `device` is the interface name label."""
    return "".join(_format_family(f) for f in _families(snapshot, device))


# Counters with a receive and a transmit side: (name, help, receive field, transmit field).
_DIRECTIONAL: tuple[tuple[str, str, str, str], ...] = (
    (
        "firezone_gw_udp_packets_total",
        "UDP datagrams on the WireGuard socket.",
        "udp_rx_packets",
        "udp_tx_packets",
    ),
    (
        "firezone_gw_udp_bytes_total",
        "UDP payload bytes on the WireGuard socket.",
        "udp_rx_bytes",
        "udp_tx_bytes",
    ),
    (
        "firezone_gw_tun_packets_total",
        "IP packets on the TUN device.",
        "tun_rx_packets",
        "tun_tx_packets",
    ),
    (
        "firezone_gw_tun_bytes_total",
        "IP packet bytes on the TUN device.",
        "tun_rx_bytes",
        "tun_tx_bytes",
    ),
)
# Unlabelled totals, in exposition order: (type, name, help, Totals field).
_TOTALS: tuple[tuple[str, str, str, str], ...] = (
    (
        "counter",
        "firezone_gw_handshake_initiations_sent_total",
        "Handshake initiations sent.",
        "handshakes_initiated",
    ),
    (
        "counter",
        "firezone_gw_handshakes_completed_total",
        "Sessions established.",
        "handshakes_completed",
    ),
    (
        "counter",
        "firezone_gw_handshakes_rejected_total",
        "Handshake messages rejected.",
        "handshakes_rejected",
    ),
    (
        "counter",
        "firezone_gw_cookie_replies_sent_total",
        "Cookie replies sent under load.",
        "cookie_replies_sent",
    ),
    (
        "counter",
        "firezone_gw_gso_batches_total",
        "UDP GSO sends (one sendmsg each).",
        "gso_batches",
    ),
    (
        "counter",
        "firezone_gw_gso_segments_total",
        "Datagrams sent in UDP GSO batches.",
        "gso_segments",
    ),
    (
        "counter",
        "firezone_gw_udp_source_fallbacks_total",
        "Datagrams sent from the kernel's choice of address: the one the peer wrote to is gone.",
        "udp_source_fallbacks",
    ),
    (
        "gauge",
        "firezone_gw_gso_batch_segments_average",
        "Average datagrams per GSO send.",
        "gso_average_segments",
    ),
    (
        "counter",
        "firezone_gw_child_restarts_total",
        "Data-plane processes restarted.",
        "child_restarts",
    ),
    (
        "counter",
        "firezone_gw_peer_table_full_total",
        "Peers without a stats slot.",
        "peer_table_full",
    ),
    (
        "counter",
        "firezone_gw_icmp_errors_sent_total",
        "ICMP errors the gateway sent to peers (administratively prohibited).",
        "icmp_errors_sent",
    ),
    (
        "counter",
        "firezone_gw_icmp_errors_rate_limited_total",
        "ICMP errors not sent: the peer's rate limit was spent.",
        "icmp_errors_rate_limited",
    ),
)


def _families(snap: StatsSnapshot, device: str) -> Iterable[_Family]:
    t = snap.totals

    def counter(name: str, help_text: str) -> _Family:
        return _Family(name, "counter", help_text)

    def gauge(name: str, help_text: str) -> _Family:
        return _Family(name, "gauge", help_text)

    for name, help_text, receive, transmit in _DIRECTIONAL:
        fam = counter(name, help_text)
        fam.add(getattr(t, receive), direction="receive")
        fam.add(getattr(t, transmit), direction="transmit")
        yield fam
    fam = counter("firezone_gw_drops_total", "Packets dropped, by reason.")
    for reason, count in snap.drops.items():
        fam.add(count, reason=reason)
    yield fam
    for kind, name, help_text, value in _TOTALS:
        fam = _Family(name, kind, help_text)
        fam.add(getattr(t, value))
        yield fam
    yield from _dns_and_nat_families(snap)

    yield _mtu_family(snap)
    yield _transport_family(snap)
    occupancy = gauge("firezone_gw_ring_occupancy_packets", "Packets waiting in a ring.")
    capacity = gauge("firezone_gw_ring_capacity_packets", "Slots in a ring.")
    full = counter("firezone_gw_ring_full_events_total", "Sends that found a ring full.")
    for ring in snap.rings:
        occupancy.add(ring.occupancy, ring=ring.name)
        capacity.add(ring.capacity, ring=ring.name)
        full.add(ring.full_events, ring=ring.name)
    yield from (occupancy, capacity, full)

    cpu = counter("firezone_gw_process_cpu_seconds_total", "User and system CPU time.")
    rss = gauge("firezone_gw_process_resident_memory_bytes", "Resident memory size.")
    busy = gauge("firezone_gw_process_busy_ratio", "Share of the last seconds spent working.")
    for proc in snap.processes:
        if proc.cpu_seconds is not None:
            cpu.add(proc.cpu_seconds, process=proc.role)
        if proc.rss_bytes is not None:
            rss.add(proc.rss_bytes, process=proc.role)
        if proc.busy_fraction is not None:
            busy.add(proc.busy_fraction, process=proc.role)
    yield from (cpu, rss, busy)
    crypto = gauge(
        "firezone_gw_crypto_busy_ratio",
        "Share of the last seconds the crypto process spent working (near 1: add gateways).",
    )
    if snap.crypto_busy_fraction is not None:
        crypto.add(snap.crypto_busy_fraction)
    yield crypto

    yield from _resource_families(snap)
    yield from _peer_families(snap, device)


def _peer_families(snap: StatsSnapshot, device: str) -> Iterable[_Family]:
    def counter(name: str, help_text: str) -> _Family:
        return _Family(name, "counter", help_text)

    def gauge(name: str, help_text: str) -> _Family:
        return _Family(name, "gauge", help_text)

    info = gauge("wireguard_peer_info", "Peer metadata (value is always 1).")
    rx = counter("wireguard_peer_receive_bytes_total", "Bytes received from the peer.")
    tx = counter("wireguard_peer_transmit_bytes_total", "Bytes sent to the peer.")
    rxp = counter("wireguard_peer_receive_packets_total", "Packets received from the peer.")
    txp = counter("wireguard_peer_transmit_packets_total", "Packets sent to the peer.")
    hs = gauge(
        "wireguard_peer_last_handshake_seconds",
        "UNIX time of the peer's latest handshake (0 = never).",
    )
    for peer in snap.peers:
        key = base64.b64encode(peer.public_key).decode()
        info.add(1, device=device, public_key=key, endpoint=peer.endpoint)
        rx.add(peer.rx_bytes, device=device, public_key=key)
        tx.add(peer.tx_bytes, device=device, public_key=key)
        rxp.add(peer.rx_packets, device=device, public_key=key)
        txp.add(peer.tx_packets, device=device, public_key=key)
        hs.add(peer.last_handshake, device=device, public_key=key)
    yield from (info, rx, tx, rxp, txp, hs)

    rest = snap.aggregated
    peers = gauge("firezone_gw_peers", "Peers the gateway has (with a stats slot).")
    peers.add(len(snap.peers) + rest.peers)
    aggregated = gauge(
        "firezone_gw_peers_aggregated",
        "Peers beyond [metrics] max_peer_series: no per-peer series, summed below.",
    )
    aggregated.add(rest.peers)
    rest_bytes = gauge(
        "firezone_gw_peers_aggregated_bytes", "Bytes of the peers without per-peer series."
    )
    rest_bytes.add(rest.rx_bytes, device=device, direction="receive")
    rest_bytes.add(rest.tx_bytes, device=device, direction="transmit")
    rest_packets = gauge(
        "firezone_gw_peers_aggregated_packets", "Packets of the peers without per-peer series."
    )
    rest_packets.add(rest.rx_packets, device=device, direction="receive")
    rest_packets.add(rest.tx_packets, device=device, direction="transmit")
    yield from (peers, aggregated, rest_bytes, rest_packets)


def _resource_families(snap: StatsSnapshot) -> Iterable[_Family]:
    """The policy's per-resource counters, labelled by resource name."""
    allowed = _Family(
        "firezone_gw_resource_allowed_packets_total", "counter", "Packets the policy let through."
    )
    allowed_bytes = _Family(
        "firezone_gw_resource_allowed_bytes_total",
        "counter",
        "Bytes of the packets the policy let through.",
    )
    denied = _Family(
        "firezone_gw_resource_denied_packets_total", "counter", "Packets the policy denied."
    )
    for resource in snap.resources:
        allowed.add(resource.allowed_packets, resource=resource.name)
        allowed_bytes.add(resource.allowed_bytes, resource=resource.name)
        denied.add(resource.denied_packets, resource=resource.name)
    return (allowed, allowed_bytes, denied)


def _dns_and_nat_families(snap: StatsSnapshot) -> Iterable[_Family]:
    yield from _dns_families(snap.dns)
    yield from _nat_families(snap.nat)


def _dns_families(counters: Mapping[str, int]) -> Iterable[_Family]:
    """The DNS process's counters: firezone_gw_dns_<name>_total, SERVFAIL by reason (none
    when no DNS server ran)."""
    if not counters:
        return
    servfail = _Family("firezone_gw_dns_servfail_total", "counter", "SERVFAIL answers, by reason.")
    for name, value in counters.items():
        if name.startswith("servfail_"):
            servfail.add(value, reason=name.removeprefix("servfail_"))
        elif name in st.DNS_GAUGES:
            fam = _Family(f"firezone_gw_dns_{name}", "gauge", f"DNS {name.replace('_', ' ')}.")
            fam.add(value)
            yield fam
        else:
            fam = _Family(
                f"firezone_gw_dns_{name}_total", "counter", f"DNS {name.replace('_', ' ')}."
            )
            fam.add(value)
            yield fam
    yield servfail


def _nat_families(counters: Mapping[str, int]) -> Iterable[_Family]:
    """The crypto process's NAT for DNS resources: firezone_gw_nat_<name>_total, entries."""
    for name, value in counters.items():
        text = f"NAT of DNS resources: {name.replace('_', ' ')}."
        if name in st.NAT_GAUGES:
            fam = _Family(f"firezone_gw_nat_{name}", "gauge", text)
        else:
            fam = _Family(f"firezone_gw_nat_{name}_total", "counter", text)
        fam.add(value)
        yield fam


def _mtu_family(snap: StatsSnapshot) -> _Family:
    family = _Family("firezone_gw_tun_mtu_bytes", "gauge", "MTU of the TUN device, as it is now.")
    if snap.mtu:  # 0: not known yet
        family.add(snap.mtu)
    return family


def _transport_family(snap: StatsSnapshot) -> _Family:
    family = _Family(
        "firezone_gw_transport_info",
        "gauge",
        "The crypto process's per-packet path: native (the Rust extension) or python.",
    )
    if snap.transport:  # "": the crypto process has not started yet
        family.add(1, backend=snap.transport)
    return family


def _format_family(family: _Family) -> str:
    lines = [f"# HELP {family.name} {family.help}", f"# TYPE {family.name} {family.kind}"]
    for labels, value in family.samples:
        label_text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
        name = f"{family.name}{{{label_text}}}" if labels else family.name
        lines.append(f"{name} {value!r}")
    return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def parse_listen(text: str) -> Endpoint:
    """'127.0.0.1:9586', '[::1]:9586' or 'localhost:9586' -> (address, port); port 0 = any."""
    try:
        return resolve_endpoint(parse_endpoint(text, min_port=0))
    except EndpointError as exc:
        raise ValueError(f"metrics listen address {text!r}: {exc}") from None


class _RequestTooLargeError(OSError):
    pass


class _DeadlineStream(io.RawIOBase):
    """The connection as a file whose reads and writes all end by one deadline.

    A socket timeout alone bounds each read: a client sending a byte every few seconds would
    hold its thread forever. Reads also stop after `budget` bytes (a scrape is a few hundred).
    """

    def __init__(self, sock: socket.socket, deadline: float, budget: int) -> None:
        super().__init__()
        self._sock = sock
        self._deadline = deadline
        self._budget = budget

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        if self._budget <= 0:
            raise _RequestTooLargeError("request is larger than the server reads")
        self._arm()
        with memoryview(buffer) as view:
            got = self._sock.recv_into(view, min(len(view), self._budget))
        self._budget -= got
        return got

    def write(self, data: ReadableBuffer) -> int:
        self._arm()
        self._sock.sendall(data)
        with memoryview(data) as view:
            return view.nbytes

    def _arm(self) -> None:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("request deadline passed")
        self._sock.settimeout(remaining)


class _Server(http.server.ThreadingHTTPServer):
    """One thread per connection, at most `max_connections` at once; beyond that a new
    connection is closed at once (and counted), so nothing queues behind slow clients."""

    block_on_close = True  # server_close() joins the handler threads (close() unblocks them)

    def __init__(
        self, address: tuple[str, int], app: MetricsServer, *, max_connections: int, deadline: float
    ) -> None:
        self.address_family = (
            socket.AF_INET6 if ipaddress.ip_address(address[0]).version == 6 else socket.AF_INET  # noqa: PLR2004 (IP version)
        )
        self.app = app
        self.deadline = deadline
        self.max_connections = max_connections
        self.refused = 0
        self._active: set[socket.socket] = set()
        self._lock = threading.Lock()
        super().__init__(address, _Handler)
        self.socket.setblocking(False)  # accept() after a vanished connection must not hang

    def verify_request(self, request: Any, client_address: Any) -> bool:
        with self._lock:
            if len(self._active) >= self.max_connections:
                self.refused += 1
                log.debug("metrics http: %d connections open, refusing one", len(self._active))
                return False
            self._active.add(request)
            return True

    def shutdown_request(self, request: Any) -> None:
        with self._lock:
            self._active.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that sent garbage, hung up or ran out of time: its business, not ours.
        log.debug("metrics http: connection from %s dropped", client_address, exc_info=True)

    @property
    def open_connections(self) -> int:
        with self._lock:
            return len(self._active)

    def hang_up_all(self) -> None:
        """Wake every handler thread blocked on its client (its next read sees EOF)."""
        with self._lock:
            for sock in self._active:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.0"  # one request per connection: the deadline covers it all

    def setup(self) -> None:
        self.connection = self.request
        stream = _DeadlineStream(
            self.request, time.monotonic() + self.server.deadline, MAX_REQUEST_BYTES
        )
        self.rfile = io.BufferedReader(stream)
        self.wfile = io.BufferedWriter(stream)

    def do_GET(self) -> None:
        status, content_type, body = self.server.app.respond(self.path)
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        log.debug("metrics http: " + format, *args)


class MetricsServer:
    """Serves /metrics, /healthz and /readyz from threads of the supervisor.

    A listener thread accepts; each connection gets its own thread, at most
    `max_connections` at once, and is closed `request_deadline` seconds after it was
    accepted whatever the client does, so slow or idle clients cannot delay a probe.
    Answers are computed one at a time (the callbacks need not be thread-safe).
    """

    def __init__(  # noqa: PLR0913 (the callbacks plus two limits with defaults)
        self,
        listen: tuple[str, int],
        *,
        snapshot: Callable[[], StatsSnapshot],
        ready: ReadyCheck,
        device: str,
        max_connections: int = MAX_CONNECTIONS,
        request_deadline: float = REQUEST_DEADLINE_SECONDS,
    ) -> None:
        self._snapshot = snapshot
        self._ready = ready
        self._device = device
        self._respond_lock = threading.Lock()
        self._httpd = _Server(
            listen, self, max_connections=max_connections, deadline=request_deadline
        )
        self._thread: threading.Thread | None = None
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._httpd.server_address[:2]
        return str(host), int(port)

    @property
    def refused_connections(self) -> int:
        return self._httpd.refused

    @property
    def open_connections(self) -> int:
        return self._httpd.open_connections

    def start(self) -> None:
        self._thread = threading.Thread(target=self._serve, name="metrics-http", daemon=True)
        self._thread.start()

    def close(self) -> None:
        if self._thread is not None:
            os.write(self._wake_w, b"x")
            self._thread.join()
            self._thread = None
        self._httpd.hang_up_all()
        self._httpd.server_close()
        os.close(self._wake_r)
        os.close(self._wake_w)

    def _serve(self) -> None:
        # Blocks until a connection or close(): no periodic wake-ups (serve_forever polls).
        with selectors.DefaultSelector() as selector:
            selector.register(self._httpd, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            while True:
                for key, _ in selector.select():
                    if key.fileobj == self._wake_r:
                        return
                    # accept, verify_request, start a handler thread
                    self._httpd._handle_request_noblock()  # type: ignore[attr-defined]  # stdlib's, not in typeshed

    def respond(self, path: str) -> tuple[int, str, bytes]:
        """(status, content type, body) for a GET of `path`."""
        with self._respond_lock:
            return self._respond(path)

    def _respond(self, path: str) -> tuple[int, str, bytes]:
        route = path.split("?", 1)[0]
        if route == "/metrics":
            try:
                text = render(self._snapshot(), device=self._device) + self._server_families()
                text += ha_status.metrics_text(ha_status.read_status())
            except Exception:
                log.exception("metrics scrape failed")
                return 500, "text/plain; charset=utf-8", b"scrape failed\n"
            return 200, CONTENT_TYPE, text.encode()
        if route == "/healthz":
            return 200, "text/plain; charset=utf-8", b"ok\n"
        if route == "/readyz":
            try:
                ok, reason = self._ready()
            except Exception as exc:
                log.exception("readiness check failed")
                ok, reason = False, f"readiness check failed: {exc}"
            if ok:
                return 200, "text/plain; charset=utf-8", b"ready\n"
            line = " ".join(reason.split()) or "not ready"
            return 503, "text/plain; charset=utf-8", f"{line}\n".encode()
        return 404, "text/plain; charset=utf-8", b"not found\n"

    def _server_families(self) -> str:
        refused = _Family(
            "firezone_gw_metrics_connections_refused_total",
            "counter",
            "Connections to this server closed unanswered: too many were open.",
        )
        refused.add(self._httpd.refused)
        ready = _Family(
            "firezone_gw_ready",
            "gauge",
            "1 while the gateway forwards (what /readyz answers 200 for), else 0.",
        )
        try:
            ready.add(1 if self._ready()[0] else 0)
        except Exception:  # noqa: BLE001 - any failing check means not ready; /readyz logs it
            ready.add(0)
        return _format_family(refused) + _format_family(ready)
