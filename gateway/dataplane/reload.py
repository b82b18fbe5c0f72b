"""SIGHUP: load the config file again and apply what changed, keeping sessions.

The supervisor parses the file, once: an invalid file changes nothing. It applies the
[interface] (listen port, MTU, addresses; a rename takes a restart) and sends the parsed
config to the crypto process (`control.send_reload`: its peers, policy and proxy grants).
Only once the crypto process acknowledges that reload (`ReloadDone`: its mappings follow the
new resources first), or a crypto process forked from the new config runs, the DNS process
restarts if what it is built from changed (the DNS process is forked from the parsed config
too). A crypto process that could not read the config is restarted from it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from gateway.config import ConfigError, GatewayConfig, InterfaceConfig, load_config
from gateway.dataplane.children import Child
from gateway.dataplane.control import ReloadDone, send_reload
from gateway.dataplane.runtime import Runtime
from gateway.dataplane.targets import Running
from tunio.device_state import interface_up
from tunio.errors import TunError

log = logging.getLogger(__name__)


class ConfigReload:
    """Applies a reloaded config to the running gateway."""

    def __init__(  # noqa: PLR0913 - keyword-only, one per collaborator
        self,
        config_path: Path,
        *,
        running: Running,
        runtime: Runtime,
        crypto_child: Child | None,
        dns_child: Child | None,
        restart: Callable[[Child], bool],
        move_port: Callable[[int], None],
        follow_mtu: Callable[[int], None],
    ) -> None:
        self.config_path = config_path
        self.running = running
        self.runtime = runtime
        self.crypto_child = crypto_child
        self.dns_child = dns_child
        self._restart = restart  # kill and fork a child again (False: not yet running)
        self._move_port = move_port  # bind the new port and move the UDP process onto it
        self._follow_mtu = follow_mtu  # the device's MTU changed: report and pad to it
        self.generation = 0  # of the last reload sent to the crypto process
        # What the DNS process was built from (no keys: children forked meanwhile inherit
        # it), while a reload waits for the crypto process's acknowledgement (None: none).
        self._dns_built_from: DnsInputs | None = None

    def reload(self) -> bool:
        """True when the crypto process was sent the config (it answers ReloadDone once
        applied: `acknowledged`)."""
        try:
            config = load_config(self.config_path)
        except ConfigError as exc:
            log.error("reload refused, keeping the running config:\n%s", exc)
            return False
        old, self.running.config = self.running.config, config
        self._reload_interface(old.interface, config.interface)
        self.generation += 1
        if self._dns_built_from is None:
            self._dns_built_from = _dns_inputs(old)
        log.info("reloaded %s: %d peers", self.config_path, len(config.peers))
        try:
            send_reload(self.runtime.control, self.generation, config)
        except OSError as exc:
            # The crypto process is being restarted (it starts from the new config), or its
            # queue is full: either way crypto_started or the next reload settles the DNS.
            log.error("reload: cannot reach the crypto process: %s", exc)
            return False
        return True

    def acknowledged(self, done: ReloadDone) -> None:
        """The crypto process answered reload `done.generation`."""
        if done.generation != self.generation or self._dns_built_from is None:
            return  # an earlier reload's, or one a restarted crypto process read again
        if not done.applied and self.crypto_child is not None:
            log.error(
                "reload %d: the crypto process could not read it: restarting it", done.generation
            )
            self._restart(self.crypto_child)  # forked from the new config: crypto_started
            return
        self._follow_dns()

    def crypto_started(self) -> None:
        """A crypto process was forked: it runs the config as reloaded last."""
        self._follow_dns()

    def _follow_dns(self) -> None:
        old, self._dns_built_from = self._dns_built_from, None
        if old is not None:
            self._reload_dns(old, self.running.config)

    def _reload_dns(self, old: DnsInputs, new: GatewayConfig) -> None:
        """A DNS server whose inputs changed starts over with them (pending queries are
        lost: clients retry; names keep their proxy pairs, see gateway/dns/proxy.py)."""
        child = self.dns_child
        if (child is None) != (new.dns is None):
            log.warning("reload: starting or stopping the DNS server takes a restart")
            return
        if child is None or old == _dns_inputs(new) or not self._restart(child):
            return
        log.info("reload: DNS server restarted with the new resources, grants and upstreams")

    def _reload_interface(self, old: InterfaceConfig, new: InterfaceConfig) -> None:
        """Apply a reloaded [interface]: listen port, MTU and addresses (not the name)."""
        if new.name != old.name:
            log.warning("reload: renaming %s to %s takes a restart", old.name, new.name)
        if new.listen_port != old.listen_port:
            self._move_port(new.listen_port)
        if new.mtu == old.mtu and new.addresses == old.addresses:
            return
        tun = self.runtime.tun
        if tun.device_name() != tun.name or interface_up(tun.name) is None:
            log.warning("reload: %s is not in this namespace: MTU and addresses kept", tun.name)
            return
        # An MTU the config did not change stays as it is, even if `ip link` changed it.
        mtu = new.mtu if new.mtu != old.mtu else self.running.mtu
        try:
            tun.manager.configure(mtu=mtu, addresses=new.addresses)
            for address in set(old.addresses) - set(new.addresses):
                tun.manager.remove_address(address)
        except TunError as exc:
            log.error("reload: %s", exc)
            return
        self._follow_mtu(mtu)
        log.info("reload: %s has MTU %d and %d addresses", tun.name, mtu, len(new.addresses))


DnsInputs = tuple[object, ...]


def _dns_inputs(config: GatewayConfig) -> DnsInputs:
    """What the DNS process is built from (gateway/dataplane/dnsmain.py build_server)."""
    peers = tuple((p.public_key, p.allowed_ips, p.resources) for p in config.peers)
    return (config.dns, config.resources, config.interface.addresses, peers)
