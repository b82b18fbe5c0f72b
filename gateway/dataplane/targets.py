"""The supervisor's children: what each runs after fork and which of the supervisor's fds
it keeps.

One `Child` per role of gateway/topology.py (`child_roles`: the roles list is built here
only), each with its heartbeat slot. A target runs in the forked child and reads the
supervisor's state as it is at that fork (`Running`: the config as last reloaded, the TUN
device's MTU; `Runtime.udp`: the socket bound now). Every child but the crypto process
first drops the keys it does not need: only the crypto process can reach key material.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, replace

from gateway import topology
from gateway.config import GatewayConfig
from gateway.dataplane.children import Child, ChildFds, report_ready
from gateway.dataplane.cryptomain import CryptoInputs, crypto_main
from gateway.dataplane.heartbeat import Heartbeats
from gateway.dataplane.runtime import Runtime
from gateway.dataplane.udpproc import run_udp
from gateway.dataplane.worker import run_worker
from tunio.device_state import DeviceGone, device_gone_error
from tunio.errors import TunError


@dataclass
class Running:
    """What changes while the gateway runs and a child forked later must see."""

    config: GatewayConfig  # as last reloaded
    mtu: int  # the TUN device's, as last seen (`ip link` may change it)


class ChildTargets:
    """Builds the children and runs each one's life in the forked process."""

    def __init__(self, workers: int, runtime: Runtime, running: Running) -> None:
        self.workers = workers
        self.runtime = runtime
        self.running = running
        roles = topology.child_roles(workers, dns=running.config.dns is not None)
        self._heartbeats = Heartbeats(roles)
        self.children = {role: self._child(role) for role in roles}

    def _child(self, role: str) -> Child:
        target: Callable[[], None]
        fds: Callable[[], ChildFds]
        index = topology.worker_index(role)
        if index is not None:
            target = functools.partial(self._worker_target, index)
            fds = functools.partial(self._worker_fds, index)
        elif role == topology.CRYPTO:
            target, fds = self._crypto_target, self._crypto_fds
        elif role == topology.UDP:
            target, fds = self._udp_target, self._udp_fds
        else:
            target, fds = self._dns_target, self._dns_fds
        return Child(
            role,
            target,
            process_name=topology.process_name(role),
            fds=fds,
            heartbeat=self._heartbeats[role],
        )

    # ---- what each child keeps (fds) -----------------------------------------------------

    def _worker_fds(self, index: int) -> ChildFds:
        ring_fds = self.runtime.rings.worker_fds(index)
        queue = self.runtime.tun.queues[index].fileno()
        return replace(ring_fds, other=(*ring_fds.other, queue))

    def _udp_fds(self) -> ChildFds:
        ring_fds = self.runtime.rings.udp_fds()
        return replace(ring_fds, other=(*ring_fds.other, self.runtime.udp.fileno()))

    def _crypto_fds(self) -> ChildFds:
        rt = self.runtime
        ring_fds = rt.rings.crypto_fds()
        extra = [rt.control_child.fileno(), *rt.uapi.fds()]
        if rt.runstate is not None:
            extra += rt.runstate.fds()
        if rt.mappings is not None:
            extra.append(rt.mappings.crypto.fileno())
        return replace(ring_fds, other=(*ring_fds.other, *extra))

    def _dns_fds(self) -> ChildFds:
        mappings = self.runtime.mappings
        return ChildFds(other=() if mappings is None else (mappings.dns.fileno(),))

    # ---- what each child runs ------------------------------------------------------------

    def _drop_keys(self, *, keep_peers: bool) -> None:
        """In a child other than crypto: drop key material only the crypto process needs
        (its run-state memfd is already closed; dropping the object unmaps it). The private
        key always; the peers whole, or (`keep_peers`) only their preshared keys."""
        cfg = self.running.config
        interface = replace(cfg.interface, private_key=bytes(len(cfg.interface.private_key)))
        peers = tuple(replace(p, preshared_key=None) for p in cfg.peers) if keep_peers else ()
        self.running.config = replace(cfg, interface=interface, peers=peers)
        self.runtime.runstate = None

    def _worker_target(self, index: int) -> None:
        self._drop_keys(keep_peers=False)
        role = topology.worker(index)
        block = self.runtime.stats.attach_process(role)
        report_ready()
        try:
            run_worker(
                self.runtime.tun.queues[index],
                self.runtime.rings.workers_to_crypto[index],
                self.runtime.rings.crypto_to_workers[index],
                block,
                self._heartbeats[role],
            )
        except (TunError, OSError) as exc:
            if device_gone_error(exc):
                raise DeviceGone(str(exc)) from exc
            raise

    def _crypto_target(self) -> None:
        """Its inputs as they are now (reloaded config, moved port, the device's MTU)."""
        rt = self.runtime
        crypto_main(
            CryptoInputs(
                config=self.running.config,
                rings=rt.rings.for_crypto(),
                stats=rt.stats,
                control=rt.control_child,
                uapi=rt.uapi,
                runstate=rt.runstate,
                listen_port=rt.udp.port,
                heartbeat=self._heartbeats[topology.CRYPTO],
                mtu=self.running.mtu,  # not the config's: `ip link` may have set it
                mappings=None if rt.mappings is None else rt.mappings.crypto,
            )
        )

    def _dns_target(self) -> None:
        """The peers' addresses and grants, none of the keys."""
        self._drop_keys(keep_peers=True)
        from gateway.dataplane.dnsmain import run_dns  # noqa: PLC0415 - asyncio: in this child only, not before the data plane forwards

        mappings = self.runtime.mappings
        run_dns(
            self.running.config,
            None if mappings is None else mappings.dns,
            self.runtime.stats.attach_process(topology.DNS),
            self._heartbeats[topology.DNS],
        )

    def _udp_target(self) -> None:
        self._drop_keys(keep_peers=False)
        block = self.runtime.stats.attach_process(topology.UDP)
        report_ready()
        stats = self.runtime.stats
        run_udp(
            self.runtime.udp,
            self.runtime.rings.udp_to_crypto,
            self.runtime.rings.crypto_to_udp,
            block,
            self._heartbeats[topology.UDP],
            public_key=lambda: stats.public_key,  # the crypto process publishes it
        )
