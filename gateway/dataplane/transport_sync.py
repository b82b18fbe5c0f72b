"""The crypto loop's side of the transport's batches (gateway/dataplane/transport.py).

Before a batch: the peers whose send state changed and the routes go into the transport's
tables (`push`, O(changed peers); the routes whole, only after they changed). After it: the
Device gets each session's figures once (`pull`: roaming, timers, rekeying, rx/tx) and the
drops the batch counted. Between the two, any message the batch left to Python goes to the
Device as before, and `push` runs again before the next batch, so what the Device changed
(a confirmed session, a new endpoint) holds for the packets after it.
"""

from __future__ import annotations

from gateway.dataplane.framing import encode_endpoint
from gateway.dataplane.transport import Transport
from gateway.dataplane.transport_py import (
    D_DECRYPT,
    D_EXPIRED,
    D_MALFORMED_INNER,
    D_REPLAY,
    D_RING_FULL,
    D_SPOOFED,
)
from gateway.telemetry import stats as st
from gateway.wireguard.device import Device
from gateway.wireguard.drops import Drop

_CORE_DROPS = (
    (D_DECRYPT, Drop.DECRYPT_FAILED),
    (D_REPLAY, Drop.REPLAY),
    (D_EXPIRED, Drop.EXPIRED_KEYPAIR),
    (D_MALFORMED_INNER, Drop.MALFORMED_INNER),
    (D_SPOOFED, Drop.SPOOFED_SOURCE),
)


class TransportSync:
    """Keeps a Device's transport tables in step with it (see module docstring)."""

    def __init__(self, device: Device, transport: Transport) -> None:
        if device.transport is not transport:
            raise ValueError("the Device must hold the transport's sessions")
        self.device = device
        self.transport = transport
        self._routes_version = -1

    def push(self) -> None:
        device, transport = self.device, self.transport
        if device.routes_version != self._routes_version:
            transport.set_routes(device.routes())
            self._routes_version = device.routes_version
        dirty, removed = device.take_transport_peers()
        for order in removed:
            transport.remove_peer(order)
        for peer in dirty:
            if device.peer(peer.public_key) is not peer:
                continue  # removed since (its order is in `removed`)
            kp = peer.keypairs.current
            endpoint = None if peer.endpoint is None else encode_endpoint(peer.endpoint)
            send = None if kp is None or peer.staged else kp.local_index
            transport.set_peer(peer.order, endpoint, send)

    def pull(self, now: float, counters: memoryview) -> None:
        transport = self.transport
        activity = transport.take_activity()
        if activity:
            self.device.apply_transport_activity(activity, now)
        drops = transport.take_drops()
        if any(drops):
            core = self.device.drops
            for index, reason in _CORE_DROPS:
                if drops[index]:
                    core[reason] += drops[index]
            counters[st.DROP_RING_FULL] += drops[D_RING_FULL]
