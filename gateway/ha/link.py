"""The replication link's I/O: a thread of the crypto process that only moves bytes.

It listens on `[ha] listen`; while this node is active it also dials `[ha] peer` (again
every DIAL_INTERVAL while that fails). The dialled connection carries this node's batches;
an accepted one carries the other node's. Each connection has its own Channel (its own ids
and sequence numbers); an accepted connection becomes the one whose batches count only once
a batch on it opened (a connection that only sends a replayed HELLO replaces nothing).

Every TICK it reads the role keepalived last gave (gateway/ha/role.py: the notify hook
writes it to `<runtime dir>/ha-role`, so it survives a crypto restart) and, while active,
wakes the loop to look for changes (a standby's loop: once a second and for batches). The
loop (`HaService.on_wake`, a handler of the crypto loop) does everything that touches state;
this thread and the loop exchange events and batches through two queues and a socketpair
that wakes the loop.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import selectors
import socket
import threading
import time
from typing import Any

import nacl.public

from gateway.ha.channel import Channel
from gateway.ha.codec import Batch, DnsMapping
from gateway.ha.node import HaNode
from gateway.ha.role import read_role
from gateway.ha.settings import HaConfig
from gateway.telemetry.ha_status import write_status

log = logging.getLogger(__name__)

TICK = 0.1  # seconds between looks at the role and (while active) the state
STATUS_INTERVAL = 1.0  # a standby's loop is woken only this often (and for batches)
DIAL_INTERVAL = 1.0
DIAL_TIMEOUT = 1.0
SEND_TIMEOUT = 2.0  # a peer that takes no bytes for this long is dropped (then dialled again)
MAX_PENDING = 4  # accepted connections not yet proven
MAX_QUEUED_BATCHES = 64


class _Link(threading.Thread):
    def __init__(self, config: HaConfig, wake: socket.socket) -> None:
        super().__init__(name="fzgw-ha", daemon=True)
        self._own = nacl.public.PrivateKey(config.secret_key)
        self._peer_key = nacl.public.PublicKey(config.peer_public_key)
        self._config = config
        self._wake = wake
        self.events: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.outgoing: queue.Queue[Batch] = queue.Queue(MAX_QUEUED_BATCHES)
        self.active = False
        self.drops = 0
        self._selector = selectors.DefaultSelector()
        self._out: tuple[socket.socket, Channel] | None = None
        self._in: tuple[socket.socket, Channel] | None = None
        self._pending: dict[socket.socket, Channel] = {}
        self._last_dial = 0.0
        self._connecting: socket.socket | None = None
        self._role: str | None = None

    def _channel(self) -> Channel:
        return Channel(self._own, self._peer_key)

    def _post(self, kind: str, value: Any = None) -> None:
        self.events.put((kind, value))
        with contextlib.suppress(BlockingIOError):
            self._wake.send(b"\0")

    def run(self) -> None:
        while True:
            try:
                self._serve()
            except Exception:  # replication stops for a second, the gateway never
                log.exception("ha: replication link failed; starting it again in 1 s")
                self._reset()
                time.sleep(DIAL_INTERVAL)

    def _reset(self) -> None:
        for key in list(self._selector.get_map().values()):
            sock = key.fileobj
            if isinstance(sock, socket.socket):
                self._close(sock)
        self._connecting = None

    def _serve(self) -> None:
        host, port = self._config.listen
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
        listener.listen(8)
        self._selector.register(listener, selectors.EVENT_READ)
        next_tick = next_status = 0.0
        while True:
            now = time.monotonic()
            if now >= next_tick:
                next_tick = now + TICK
                role = read_role()
                if role is not None and role != self._role:
                    self._role = role
                    self._post("role", role)
                if self.active or now >= next_status:  # a standby has nothing to scan
                    next_status = now + STATUS_INTERVAL
                    self._post("tick")
                idle = self._out is None and self._connecting is None
                if self.active and idle and now - self._last_dial >= DIAL_INTERVAL:
                    self._dial(now)
                if self._connecting is not None and now - self._last_dial >= DIAL_TIMEOUT:
                    self._close(self._connecting)  # no answer: try again later
                if not self.active and self._out is not None:
                    self._close(self._out[0])
            self._send_pending()
            for key, events in self._selector.select(max(0.0, next_tick - time.monotonic())):
                sock = key.fileobj
                if not isinstance(sock, socket.socket):
                    continue
                if sock is listener:
                    self._accept(listener)
                elif sock is self._connecting and events & selectors.EVENT_WRITE:
                    self._connected(sock)
                else:
                    self._read(sock)

    def _dial(self, now: float) -> None:
        """Start a connection to the other node without waiting for it (the loop goes on
        reading the role and ticking while a dead peer's SYNs go unanswered)."""
        self._last_dial = now
        family = socket.AF_INET6 if ":" in self._config.peer[0] else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            sock.bind((self._config.listen[0], 0))
            sock.connect_ex(self._config.peer)
        except OSError as exc:
            log.debug("ha: cannot dial %s: %s", self._config.peer, exc)
            sock.close()
            return
        self._connecting = sock
        self._selector.register(sock, selectors.EVENT_WRITE)

    def _connected(self, sock: socket.socket) -> None:
        self._connecting = None
        self._selector.unregister(sock)
        error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        channel = self._channel()
        try:
            if error:
                raise OSError(error, os.strerror(error))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(SEND_TIMEOUT)
            sock.sendall(channel.hello())
        except OSError as exc:
            log.debug("ha: %s not reached: %s", self._config.peer, exc)
            sock.close()
            return
        self._out = (sock, channel)
        self._selector.register(sock, selectors.EVENT_READ)

    def _accept(self, listener: socket.socket) -> None:
        sock, _ = listener.accept()
        if len(self._pending) >= MAX_PENDING:
            oldest = next(iter(self._pending))
            self._close(oldest)
        sock.settimeout(SEND_TIMEOUT)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        channel = self._channel()
        try:
            sock.sendall(channel.hello())
        except OSError:
            sock.close()
            return
        self._pending[sock] = channel
        self._selector.register(sock, selectors.EVENT_READ)

    def _read(self, sock: socket.socket) -> None:
        try:
            data = sock.recv(1 << 16)
        except OSError:
            data = b""
        channel = self._channel_of(sock)
        if not data or channel is None:
            self._close(sock)
            return
        was_ready = channel.ready
        dropped = sum(channel.drops.values())
        batches = channel.receive(data)
        self.drops += sum(channel.drops.values()) - dropped
        if self._out is not None and sock is self._out[0]:
            if channel.ready and not was_ready:
                self._post("joined")  # the standby's HELLO: it needs everything
            batches = []  # nothing is accepted from the one we send to
        elif batches and sock in self._pending:
            if self._in is not None:
                self._close(self._in[0])
            self._in = (sock, self._pending.pop(sock))
            self._post("resync")
        if batches:
            self._post("batches", batches)
        if channel.broken:
            self._close(sock)

    def _channel_of(self, sock: socket.socket) -> Channel | None:
        for pair in (self._out, self._in):
            if pair is not None and pair[0] is sock:
                return pair[1]
        return self._pending.get(sock)

    def _send_pending(self) -> None:
        while True:
            try:
                batch = self.outgoing.get_nowait()
            except queue.Empty:
                return
            if self._out is None or not self._out[1].ready:
                continue  # the standby resyncs when it joins
            sock, channel = self._out
            try:
                sock.sendall(channel.seal(batch))
            except OSError as exc:
                log.warning("ha: replication to %s broke: %s", self._config.peer, exc)
                self._close(sock)

    def _close(self, sock: socket.socket) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(sock)
        if sock is self._connecting:
            self._connecting = None
        if self._out is not None and self._out[0] is sock:
            self._out = None
            self._post("disconnected")
        if self._in is not None and self._in[0] is sock:
            self._in = None
        self._pending.pop(sock, None)
        sock.close()


class HaService:
    """The link's thread and the node, joined in the crypto process's loop."""

    def __init__(self, node: HaNode, config: HaConfig) -> None:
        self.node = node
        self._loop_end, thread_end = socket.socketpair()
        self._loop_end.setblocking(False)
        thread_end.setblocking(False)
        self._link = _Link(config, thread_end)
        self._link.active = node.role == "active"
        self._last_status = 0.0

    def fileno(self) -> int:
        return self._loop_end.fileno()

    def start(self) -> None:
        self._link.start()

    def keep_mapping(self, mapping: DnsMapping) -> None:
        self.node.keep_mapping(mapping)

    def on_wake(self, now: float) -> None:
        with contextlib.suppress(BlockingIOError):
            self._loop_end.recv(4096)
        node, link, wall = self.node, self._link, time.time()
        while True:
            try:
                kind, value = link.events.get_nowait()
            except queue.Empty:
                break
            if kind == "role":
                node.set_role(value, now)
                link.active = node.role == "active"
            elif kind == "joined":
                node.resync(now)
                node.status.connected = True
            elif kind == "disconnected":
                node.status.connected = False
            elif kind == "resync":
                node.begin_resync()
                node.status.connected = True
            elif kind == "batches":
                for batch in value:
                    node.receive(batch, now, wall)
            elif kind == "tick":
                batch = node.tick(now, wall)
                if batch is not None:
                    with contextlib.suppress(queue.Full):  # coalesced again next resync
                        link.outgoing.put_nowait(batch)
        node.status.drops = link.drops
        if now - self._last_status >= 1.0:
            self._last_status = now
            self._write_status()

    def _write_status(self) -> None:
        status = self.node.status
        data = {
            "role": status.role,
            "connected": status.connected,
            "lag_seconds": round(status.lag, 6),
            "last_sync": status.last_sync,
            "queued": status.queued,
            "sent": status.sent,
            "applied": status.applied,
            "takeovers": status.takeovers,
            "drops": status.drops,
        }
        try:
            write_status(data)
        except OSError as exc:
            log.debug("ha: status not written: %s", exc)
