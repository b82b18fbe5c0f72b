"""SIGHUP: load the config file again and apply what changed, keeping sessions.

The supervisor applies the [interface] (listen port, MTU, addresses; a rename takes a
restart), tells the crypto process to reload (its peers, policy and proxy grants), and then
restarts the DNS process if what it is built from changed (after the crypto process was
told: its mappings follow the resources first). An invalid file changes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from gateway.config import ConfigError, GatewayConfig, InterfaceConfig, load_config
from gateway.dataplane.children import Child
from gateway.dataplane.control import Reload, send_message
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
        dns_child: Child | None,
        restart: Callable[[Child], bool],
        move_port: Callable[[int], None],
        follow_mtu: Callable[[int], None],
    ) -> None:
        self.config_path = config_path
        self.running = running
        self.runtime = runtime
        self.dns_child = dns_child
        self._restart = restart  # kill and fork a child again (False: not yet running)
        self._move_port = move_port  # bind the new port and move the UDP process onto it
        self._follow_mtu = follow_mtu  # the device's MTU changed: report and pad to it

    def reload(self) -> bool:
        """True when the crypto process was told (it answers Reloaded once applied)."""
        try:
            config = load_config(self.config_path)
        except ConfigError as exc:
            log.error("reload refused, keeping the running config:\n%s", exc)
            return False
        old, self.running.config = self.running.config, config
        self._reload_interface(old.interface, config.interface)
        try:
            send_message(self.runtime.control, Reload())
        except OSError as exc:
            log.error("reload: cannot reach the crypto process: %s", exc)
            return False
        # After the crypto process was told: its mappings follow the resources first.
        self._reload_dns(old, config)
        log.info("reloaded %s: %d peers", self.config_path, len(config.peers))
        return True

    def _reload_dns(self, old: GatewayConfig, new: GatewayConfig) -> None:
        """A DNS server whose inputs changed starts over with them (pending queries are
        lost: clients retry; names keep their proxy pairs, see gateway/dns/proxy.py)."""
        child = self.dns_child
        if (child is None) != (new.dns is None):
            log.warning("reload: starting or stopping the DNS server takes a restart")
            return
        if child is None or _dns_inputs(old) == _dns_inputs(new) or not self._restart(child):
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


def _dns_inputs(config: GatewayConfig) -> tuple[object, ...]:
    """What the DNS process is built from (gateway/dataplane/dnsmain.py build_server)."""
    peers = tuple((p.public_key, p.allowed_ips, p.resources) for p in config.peers)
    return (config.dns, config.resources, config.interface.addresses, peers)
