"""The crypto process from fork to its loop, and its control paths while the loop runs.

The supervisor forks the child with a `CryptoInputs` built at that moment (the config as
last reloaded, the port the UDP socket is bound to now) and calls `crypto_main` there. It
builds the Device from the config, the `wg` backend on it, brings back the run-time state a
previous crypto process saved (`runstate.py`), then runs `cryptoproc.run_crypto` with two fd
handlers: the `wg` control socket and the control socketpair to the supervisor
(`control.py`). The keys exist only in this process. An exception ends the process; the
supervisor restarts it from the same inputs and the saved state.
"""

from __future__ import annotations

import logging
import select
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from gateway.config import GatewayConfig
from gateway.dataplane import control
from gateway.dataplane.children import report_ready
from gateway.dataplane.cryptoproc import CryptoLoop, run_crypto
from gateway.dataplane.device_config import apply_peers, build_device
from gateway.dataplane.firewall import Firewall, build_policy
from gateway.dataplane.hamain import start_ha, to_change
from gateway.dataplane.heartbeat import Heartbeat
from gateway.dataplane.mappings import (
    MappingMessage,
    PeerAnnouncer,
    apply_message,
    receive_mappings,
)
from gateway.dataplane.restore import restore
from gateway.dataplane.rings import CryptoRings
from gateway.dataplane.runstate import RunState
from gateway.dataplane.transport import BACKEND, log_backend
from gateway.dataplane.uapi_backend import DeviceBackend
from gateway.ha.node import HaNode
from gateway.nat.handler import PeerSources, ProxyHandler, grants_by_key, sources_by_key
from gateway.telemetry import stats as st
from gateway.uapi import UapiServer, format_set
from shm_ring.ring import Ring

log = logging.getLogger(__name__)

LISTEN_PORT_WAIT = 1.0  # seconds `wg set listen-port` may wait for the supervisor's move


class PublicKeyBoard(Protocol):
    """Where `show` and /metrics read the interface's public key (gateway.telemetry.stats)."""

    public_key: bytes | None


@dataclass
class CryptoInputs:
    """What the supervisor hands the crypto process (all of it made before fork)."""

    config: GatewayConfig
    rings: CryptoRings[Ring]
    stats: st.StatsRegion
    control: socket.socket  # the crypto end of the control socketpair, non-blocking
    uapi: UapiServer | None  # the `wg` control socket, served here
    runstate: RunState | None
    listen_port: int  # the UDP port bound now
    heartbeat: Heartbeat | None = None  # progress the supervisor watches for hangs
    mtu: int | None = None  # the TUN device's now (`ip link` may have changed the config's)
    mappings: socket.socket | None = None  # proxy mappings from the DNS process (mappings.py)


class CryptoControl:
    """The crypto process's Device and Firewall and what changes them besides packets:
    `wg`, reloads and the state saved for a successor."""

    def __init__(  # noqa: PLR0913 - keyword-only, one per collaborator
        self,
        config: GatewayConfig,
        *,
        control_socket: socket.socket,
        runstate: RunState | None,
        listen_port: int,
        key_board: PublicKeyBoard,
        now: float,
    ) -> None:
        self._control = control_socket
        self._runstate = runstate
        self._key_board = key_board
        self._restoring = False
        self.device = build_device(config, now)
        log_backend()
        self.backend = DeviceBackend(
            self.device,
            listen_port=listen_port,
            request_listen_port=self._request_listen_port,
            on_change=self._save_state,
        )
        self.firewall = Firewall(build_policy(config), self.device)
        self.proxy: ProxyHandler | None = None  # DNS resources' NAT, if any
        if any(r.pattern is not None for r in config.resources):
            self.proxy = ProxyHandler(
                config.resources,
                _grants(config),
                self.firewall.reply,
                sources=_sources(config),
            )
            self.firewall.set_proxy_handler(self.proxy)
            self.backend.refuse_proxy_ranges = True
        self._loop: CryptoLoop[Ring] | None = None
        self.ha: HaNode | None = None  # one of an HA pair ([ha], gateway/ha)
        if not config.resources:
            log.info("no [[resources]] configured: no policy, peers reach everything routed here")

    def attach_loop(self, loop: CryptoLoop[Ring]) -> None:
        """The loop to give the firewall to while it has work (resources or DNS proxies)."""
        self._loop = loop
        self._update_loop()

    def _update_loop(self) -> None:
        if self._loop is not None:
            self._loop.firewall = self.firewall if self.firewall.active else None

    def restore_state(self, now: float | None = None) -> None:
        """In a restarted crypto process: bring back what `wg` and reloads had set, entry by
        entry (gateway/dataplane/restore.py), the peers' handshake timestamps and their
        sessions (kept from now on)."""
        if self._runstate is not None:
            self._restoring = True  # save once at the end, not after every entry
            restored = restore(self.backend.apply, self._runstate)
            self._restoring = False
            if restored is not None:
                self._save_state()  # as restored: entries left out are not tried again
                log.info("restored run-time state: %d peers", len(list(self.device.peers())))
            for key, timestamp in self._runstate.timestamps.load().items():
                self.device.restore_timestamp(key, timestamp)
            table = self._runstate.session_table()
            now = time.monotonic() if now is None else now
            if kept := self.device.restore_sessions(table, now):
                log.info("restored %d sessions", kept)
        self._key_board.public_key = self.device.public_key

    def keep_timestamps(self, timestamps: Mapping[bytes, bytes]) -> None:
        """Handshake timestamps the Device accepted, kept for a restarted crypto process."""
        if self._runstate is not None:
            for key, timestamp in timestamps.items():
                self._runstate.timestamps.save(key, timestamp)
        if self.ha is not None:
            self.ha.keep_timestamps(dict(timestamps))

    def on_control(self, now: float) -> None:
        """The supervisor's messages waiting on the control socket."""
        for message in control.receive_to_crypto(self._control):
            self._handle(message, now)

    def _handle(self, message: control.CryptoEvent, now: float) -> None:
        if isinstance(message, control.ConfigArrived):
            self._reload(message, now)
        elif isinstance(message, control.MtuChanged):
            self.device.mtu = message.mtu
        else:
            self.backend.listen_port = message.port

    def _reload(self, arrived: control.ConfigArrived, now: float) -> None:
        """Apply the config the supervisor parsed, then say so: the supervisor restarts the
        DNS process only after this process's mappings follow the new resources."""
        config = arrived.config
        try:
            if config is not None:
                self._apply(config, now)
        finally:  # the supervisor waits for this: READY=1, then the DNS process follows
            try:
                done = control.ReloadDone(arrived.generation, applied=config is not None)
                control.send_message(self._control, done)
            except OSError as exc:
                log.error(
                    "reload %d: not acknowledged to the supervisor: %s", arrived.generation, exc
                )

    def _apply(self, config: GatewayConfig, now: float) -> None:
        apply_peers(self.device, config, now)
        if self._loop is not None:
            self._loop.sync_peer_stats()
        # Grants and resources apply from the next packet; sessions stay (they are the Device's).
        self.firewall.set_policy(build_policy(config))
        self._update_loop()
        if self.proxy is not None:  # DNS resources added later take a restart
            self.proxy.set_grants(config.resources, _grants(config), _sources(config))
        self._save_state()
        log.info("reload: %d peers, %d resources", len(config.peers), len(config.resources))

    def _save_state(self) -> None:
        self._key_board.public_key = self.device.public_key
        if self._runstate is not None and not self._restoring:
            self._runstate.save(format_set(self.backend.get_snapshot()))

    def _request_listen_port(self, port: int) -> None:
        """Ask the supervisor to move the UDP socket, and wait (bounded) until it has, as
        wireguard-go rebinds before `wg set listen-port` returns: a packet sent right after
        must not leave from the old port through the UDP process about to be replaced."""
        try:
            control.send_message(self._control, control.ListenPortRequest(port))
        except OSError as exc:
            log.error("listen port %d not requested from the supervisor: %s", port, exc)
            return
        deadline = time.monotonic() + LISTEN_PORT_WAIT
        while (left := deadline - time.monotonic()) > 0:
            readable, _, _ = select.select([self._control], [], [], left)
            if not readable:
                break
            for message in control.receive_to_crypto(self._control):
                self._handle(message, time.monotonic())
                if isinstance(message, control.ListenPortChanged) and message.port == port:
                    return
        log.warning(
            "listen port %d: the supervisor did not confirm within %.1f s", port, LISTEN_PORT_WAIT
        )


def _grants(config: GatewayConfig) -> dict[bytes, frozenset[int]]:
    return grants_by_key(config.resources, [(p.public_key, p.resources) for p in config.peers])


def _sources(config: GatewayConfig) -> dict[bytes, PeerSources]:
    return sources_by_key((p.public_key, p.allowed_ips) for p in config.peers)


def crypto_main(inputs: CryptoInputs) -> None:
    """The crypto child's whole life: set up, report ready, run the loop (never returns)."""
    block = inputs.stats.attach_process("crypto")
    inputs.stats.transport = BACKEND  # for `show` and /metrics
    crypto = CryptoControl(
        inputs.config,
        control_socket=inputs.control,
        runstate=inputs.runstate,
        listen_port=inputs.listen_port,
        key_board=inputs.stats,
        now=time.monotonic(),
    )
    if inputs.mtu is not None:
        crypto.device.mtu = inputs.mtu
    crypto.restore_state()
    handlers: dict[int, Callable[[float], None]] = {inputs.control.fileno(): crypto.on_control}
    ha = start_ha(inputs.config, crypto.device, crypto.proxy)
    if ha is not None:
        handlers[ha.fileno()] = ha.on_wake
        crypto.ha = ha.node
    uapi = inputs.uapi
    if uapi is not None:
        uapi.backend = crypto.backend
        handlers[uapi.fileno()] = lambda _now: uapi.handle_events()
    mappings, proxy = inputs.mappings, crypto.proxy
    if mappings is not None and proxy is not None:

        def on_mappings(_now: float) -> None:
            def apply(message: MappingMessage) -> None:
                apply_message(proxy, message)
                if ha is not None:
                    ha.keep_mapping(to_change(message))

            receive_mappings(mappings, apply)

        handlers[mappings.fileno()] = on_mappings
    if mappings is not None:  # the DNS process learns of this start and of the peers' addresses
        handlers = PeerAnnouncer(mappings, crypto.device).started_watching(handlers)

    def on_loop(loop: CryptoLoop[Ring]) -> None:
        crypto.attach_loop(loop)
        loop.sync_peer_stats()  # the STATUS line sent with READY=1 counts the configured peers
        report_ready()

    run_crypto(
        crypto.device,
        inputs.rings,
        block,
        inputs.stats.peers,
        handlers=handlers,
        heartbeat=inputs.heartbeat,
        keep_timestamps=crypto.keep_timestamps,
        resource_table=inputs.stats.resources,
        on_loop=on_loop,
        proxy=crypto.proxy,
    )
