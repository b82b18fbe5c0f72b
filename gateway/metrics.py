"""Prometheus text exposition of a StatsSnapshot, and the /metrics /healthz /readyz server.

Per-peer names follow the widely used WireGuard exporter (mdlayher/wireguard_exporter):
`wireguard_peer_receive_bytes_total`, `wireguard_peer_transmit_bytes_total`,
`wireguard_peer_last_handshake_seconds`, labelled by `device` and base64 `public_key`.
Gateway-wide figures are `firezone_gw_*`. Units are base units (bytes, seconds, ratios).
"""

from __future__ import annotations

import base64
import http.server
import ipaddress
import logging
import os
import selectors
import socket
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from gateway.endpoint import Endpoint, EndpointError, parse_endpoint, resolve_endpoint
from gateway.stats import StatsSnapshot

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
DEFAULT_LISTEN = "127.0.0.1:9586"
REQUEST_TIMEOUT_SECONDS = 5.0

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


class _Server(http.server.HTTPServer):
    def __init__(self, address: tuple[str, int], app: MetricsServer) -> None:
        self.address_family = (
            socket.AF_INET6 if ipaddress.ip_address(address[0]).version == 6 else socket.AF_INET  # noqa: PLR2004 (IP version)
        )
        self.app = app
        super().__init__(address, _Handler)


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server
    timeout = REQUEST_TIMEOUT_SECONDS  # a stalled client cannot hold the server for long
    protocol_version = "HTTP/1.0"

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
    """Serves /metrics, /healthz and /readyz from a thread of the supervisor.

    One request at a time (scrapes are rare and cheap); each has a socket timeout so a
    stalled client cannot hold the server.
    """

    def __init__(
        self,
        listen: tuple[str, int],
        *,
        snapshot: Callable[[], StatsSnapshot],
        ready: ReadyCheck,
        device: str,
    ) -> None:
        self._snapshot = snapshot
        self._ready = ready
        self._device = device
        self._httpd = _Server(listen, self)
        self._thread: threading.Thread | None = None
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._httpd.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._serve, name="metrics-http", daemon=True)
        self._thread.start()

    def close(self) -> None:
        if self._thread is not None:
            os.write(self._wake_w, b"x")
            self._thread.join()
            self._thread = None
        self._httpd.server_close()
        os.close(self._wake_r)
        os.close(self._wake_w)

    def _serve(self) -> None:
        # Blocks until a request or close(): no periodic wake-ups (serve_forever polls).
        with selectors.DefaultSelector() as selector:
            selector.register(self._httpd, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            while True:
                for key, _ in selector.select():
                    if key.fileobj == self._wake_r:
                        return
                    self._httpd.handle_request()

    def respond(self, path: str) -> tuple[int, str, bytes]:
        """(status, content type, body) for a GET of `path`."""
        route = path.split("?", 1)[0]
        if route == "/metrics":
            try:
                text = render(self._snapshot(), device=self._device)
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
