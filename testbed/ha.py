"""Two firezone-gw gateways with keepalived between a client and a LAN (issue 23).

    client ─┐                          ┌─ resource (iperf3 -s)
            ├─ bridge "client side" ─ gwA, gwB ─ bridge "LAN side" ─┘
    VIP 10.211.0.1 (peers' endpoint)        VIP 10.212.0.1 (the LAN's route to the tunnel)

Both bridges live in a switch namespace; every other host is a namespace with a veth into
it, so VRRP's multicast stays on these bridges. Each gateway runs firezone-gw (the same
WireGuard key, its own replication key and runtime directory) and keepalived (VRRPv3,
advertisements every ADVERT_INT s, both BACKUP with nopreempt, notify hooks calling
gateway.ha.role). `close()` stops keepalived, the gateways, the client and removes
every namespace, even after a failure.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import tempfile

import psutil

from gateway import keys
from testbed.addresses import GATEWAY_ADDRESSES, LISTEN_PORT, TUNNEL_NET
from testbed.gateway_config import GatewayPeer
from testbed.gateways import FirezoneGateway
from testbed.netns import Hosts, NetNS, run, unique_name, wait_for
from testbed.wgpeer import WireGuardGo

CLIENT_NET, LAN_NET = "10.211.0", "10.212.0"
CLIENT_VIP, LAN_VIP = f"{CLIENT_NET}.1", f"{LAN_NET}.1"
CLIENT_ADDR, RESOURCE_ADDR = f"{CLIENT_NET}.10", f"{LAN_NET}.10"
RESOURCE_NET = f"{LAN_NET}.0/24"
REPLICATION_PORT = 51821
ADVERT_INT = 0.1  # seconds; keepalived's failover: 3 adverts + skew, about 0.35 s
CLIENT_TUNNEL = "10.77.0.2"
NAMES = ("a", "b")


def keepalived_conf(
    *, name: str, client_if: str, lan_if: str, priority: int, notify: str, router_base: int
) -> str:
    """config/keepalived-ha.conf for one node of the test (no health script: the test
    kills the whole host, and script security would refuse a notify under /tmp)."""
    instances = []
    for group, interface, vip, vrid in (
        ("CLIENT_SIDE", client_if, CLIENT_VIP, router_base),
        ("LAN_SIDE", lan_if, LAN_VIP, router_base + 1),
    ):
        instances.append(
            f"vrrp_instance {group} {{\n  state BACKUP\n  nopreempt\n  interface {interface}\n"
            f"  virtual_router_id {vrid}\n  priority {priority}\n  advert_int {ADVERT_INT}\n"
            f"  virtual_ipaddress {{\n    {vip}/24\n  }}\n}}\n"
        )
    return (
        f"global_defs {{\n  router_id fzgw_{name}\n  script_user root\n"
        "  vrrp_garp_master_delay 0\n  vrrp_garp_master_repeat 3\n  vrrp_version 3\n}\n"
        "vrrp_sync_group FIREZONE_GW {\n  group {\n    CLIENT_SIDE\n    LAN_SIDE\n  }\n"
        f'  notify_master "{notify} MASTER"\n  notify_backup "{notify} BACKUP"\n'
        f'  notify_fault "{notify} FAULT"\n}}\n' + "".join(instances)
    )


class Node:
    """One gateway host: its namespace, firezone-gw and keepalived."""

    def __init__(self, pair: HaPair, index: int, priority: int) -> None:
        self.name = NAMES[index]
        self.pair = pair
        self.priority = priority
        self.ns = pair.hosts.add(f"fzha{self.name}")
        self.client_if = pair.plug(self.ns, pair.client_bridge, f"{CLIENT_NET}.{index + 2}/24")
        self.lan_if = pair.plug(self.ns, pair.lan_bridge, f"{LAN_NET}.{index + 2}/24")
        self.address = f"{LAN_NET}.{index + 2}"
        self.ns.run("sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
        self.gateway = FirezoneGateway(workers=1)
        self.gateway.key_file.write_text(pair.wireguard_key + "\n")
        self.gateway.private_key = pair.wireguard_key
        self.gateway.public_key = keys.encode_key(
            keys.public_key(keys.decode_key(pair.wireguard_key))
        )
        self.run_dir = self.gateway.dir / "run"
        self.ha_key = keys.generate_private_key()
        (self.gateway.dir / "ha.key").write_text(keys.encode_key(self.ha_key) + "\n")
        (self.gateway.dir / "ha.key").chmod(0o600)
        self.keepalived: subprocess.Popen[bytes] | None = None

    @property
    def ha_public(self) -> str:
        return keys.encode_key(keys.public_key(self.ha_key))

    def start(self, other: Node, peers: list[GatewayPeer]) -> None:
        """firezone-gw (ready), then keepalived."""
        self.gateway.write_config(
            peers,
            GATEWAY_ADDRESSES,
            extra_toml=(
                f'[ha]\nlisten = "{self.address}:{REPLICATION_PORT}"\n'
                f'peer = "{other.address}:{REPLICATION_PORT}"\n'
                f'secret_key_file = "ha.key"\npeer_public_key = "{other.ha_public}"\n'
            ),
        )
        self.run_dir.mkdir(mode=0o700, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            (self.run_dir / "ha-role").unlink()
        env = {"FIREZONE_GW_RUNTIME_DIR": str(self.run_dir)}
        self.gateway.launch(self.ns, env=env)
        self.gateway.wait_ready()
        # `firezone-gw ha-notify` without the CLI's start-up (config/keepalived-ha.conf).
        env_dir = f"FIREZONE_GW_RUNTIME_DIR={self.run_dir}"
        notify = f"/usr/bin/env {env_dir} {sys.executable} -m gateway.ha.role"
        conf = self.gateway.dir / "keepalived.conf"
        conf.write_text(
            keepalived_conf(
                name=self.name,
                client_if=self.client_if,
                lan_if=self.lan_if,
                priority=self.priority,
                notify=notify,
                router_base=self.pair.router_base,
            )
        )
        log = (self.gateway.dir / "keepalived.log").open("ab")
        files = self.gateway.dir
        self.keepalived = self.ns.popen(
            "keepalived", "-n", "-l", "-P", "-G", "-f", str(conf),
            "-p", str(files / "keepalived.pid"), "-r", str(files / "vrrp.pid"),
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip

    def role(self) -> str | None:
        try:
            return (self.run_dir / "ha-role").read_text().strip()
        except OSError:
            return None

    def status(self) -> dict[str, object]:
        from gateway.telemetry.ha_status import read_status  # noqa: PLC0415 - test helper

        return read_status(self.run_dir) or {}

    def kill(self) -> None:
        """The host dies: SIGKILL to keepalived and every gateway process at once."""
        pids = list(self.gateway.pids())
        if self.keepalived is not None and self.keepalived.poll() is None:
            with contextlib.suppress(psutil.NoSuchProcess):
                root = psutil.Process(self.keepalived.pid)
                pids += [root.pid, *(c.pid for c in root.children(recursive=True))]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                psutil.Process(pid).send_signal(signal.SIGKILL)
        for proc in (self.gateway.proc, self.keepalived):
            if proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(5)
        # keepalived killed hard leaves its addresses: the dead host's links go down.
        for interface in (self.client_if, self.lan_if):
            self.ns.ip("link", "set", interface, "down", check=False)

    def revive(self, other: Node, peers: list[GatewayPeer]) -> None:
        for interface in (self.client_if, self.lan_if):
            self.ns.ip("addr", "flush", "dev", interface, check=False)
        for interface, addr in (
            (self.client_if, f"{CLIENT_NET}.{NAMES.index(self.name) + 2}/24"),
            (self.lan_if, f"{self.address}/24"),
        ):
            self.ns.ip("addr", "add", addr, "dev", interface)
            self.ns.ip("link", "set", interface, "up")
        self.start(other, peers)

    def close(self) -> None:
        if self.keepalived is not None and self.keepalived.poll() is None:
            self.keepalived.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.keepalived.wait(5)
        if self.gateway.proc is not None and self.gateway.proc.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.gateway.stop()
        self.gateway.close()


class HaPair:
    """The switch, client, resource and both gateway hosts (not started)."""

    def __init__(self) -> None:
        self.hosts = Hosts()
        self.nodes: list[Node] = []
        self.client: WireGuardGo | None = None
        self.iperf_server: subprocess.Popen[bytes] | None = None
        self._dir = tempfile.TemporaryDirectory(prefix="fzha-")
        self.router_base = 10 + (hash(unique_name("v")) % 200)
        try:
            self.switch = self.hosts.add("fzhasw")
            self.client_bridge = self._bridge()
            self.lan_bridge = self._bridge()
            self.wireguard_key = keys.encode_key(keys.generate_private_key())
            self.client_ns = self.hosts.add("fzhac")
            self.plug(self.client_ns, self.client_bridge, f"{CLIENT_ADDR}/24")
            self.resource = self.hosts.add("fzhar")
            self.plug(self.resource, self.lan_bridge, f"{RESOURCE_ADDR}/24")
            self.resource.ip("route", "add", TUNNEL_NET, "via", LAN_VIP)
            self.nodes = [Node(self, 0, 150), Node(self, 1, 100)]
        except BaseException:
            self.close()
            raise

    def _bridge(self) -> str:
        name = unique_name("fzhabr")
        self.switch.ip("link", "add", name, "type", "bridge")
        self.switch.ip("link", "set", name, "up")
        return name

    def plug(self, ns: NetNS, bridge: str, address: str) -> str:
        """A veth from `ns` (addressed) into the switch's `bridge`; the host's end's name."""
        host_end, switch_end = unique_name("fzhah"), unique_name("fzhas")
        run(["ip", "link", "add", host_end, "netns", ns.name, "type", "veth",
             "peer", "name", switch_end, "netns", self.switch.name])  # fmt: skip
        self.switch.ip("link", "set", switch_end, "master", bridge)
        self.switch.ip("link", "set", switch_end, "up")
        ns.ip("addr", "add", address, "dev", host_end)
        ns.ip("link", "set", host_end, "up")
        return host_end

    def start(self, client_key: str, client_public: str) -> WireGuardGo:
        """Both gateways (A first: it becomes active), the client and the iperf3 server."""
        peers = [GatewayPeer(client_public, [f"{CLIENT_TUNNEL}/32"])]
        a, b = self.nodes
        a.start(b, peers)
        wait_for(lambda: a.role() == "active", timeout=10)
        b.start(a, peers)
        wait_for(lambda: b.role() == "standby", timeout=10)
        client = WireGuardGo(self.client_ns, tag="fzhawg", private_key=client_key)
        self.client = client
        client.add_peer(
            a.gateway.public_key,
            allowed_ips=f"{TUNNEL_NET},{RESOURCE_NET}",
            endpoint=f"{CLIENT_VIP}:{LISTEN_PORT}",
        )
        client.up(f"{CLIENT_TUNNEL}/24", mtu=1280)
        client.ns.ip("route", "add", RESOURCE_NET, "dev", client.ifname)
        self.iperf_server = self.resource.popen(
            "iperf3", "-s", "-B", RESOURCE_ADDR, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        return client

    def peers(self) -> list[GatewayPeer]:
        if self.client is None:
            raise RuntimeError("the pair was not started")
        return [GatewayPeer(self.client.public_key, [f"{CLIENT_TUNNEL}/32"])]

    def close(self) -> None:
        for node in self.nodes:
            with contextlib.suppress(Exception):
                node.close()
        if self.client is not None:
            self.client.close()
        self.hosts.close()
        self._dir.cleanup()
