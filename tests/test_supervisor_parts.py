"""The supervisor's parts, each alone and without root: the names of processes and rings,
the ring topology, health, reload, the children's fds and keys, the status line."""

from __future__ import annotations

import pickle
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest

from gateway import keys, topology
from gateway.config import load_config
from gateway.dataplane import health as health_module
from gateway.dataplane.children import Child
from gateway.dataplane.control import ConfigArrived, CryptoEvent, ReloadDone, receive_to_crypto
from gateway.dataplane.health import HANG_TIMEOUT, Health
from gateway.dataplane.reload import ConfigReload
from gateway.dataplane.rings import MIN_INNER_PACKET, RingTopology
from gateway.dataplane.runtime import Runtime
from gateway.dataplane.status import _rate
from gateway.dataplane.targets import ChildTargets, Running
from gateway.telemetry.stats import StatsRegion

PRIVATE = keys.generate_private_key()
PEER = keys.encode_key(keys.public_key(keys.generate_private_key()))


def _config_text(port: int = 51820, *, dns: str = "") -> str:
    return (
        f'[interface]\nname = "fz0"\nprivate_key = "{keys.encode_key(PRIVATE)}"\n'
        f'listen_port = {port}\naddresses = ["100.64.0.1/32"]\n{dns}'
        f'[[peers]]\npublic_key = "{PEER}"\nallowed_ips = ["100.90.0.2/32"]\n'
        'preshared_key = "' + keys.encode_key(bytes(range(32))) + '"\n'
    )


# ---- names -------------------------------------------------------------------------------


def test_children_and_the_stats_layout_share_one_list_of_roles() -> None:
    assert topology.child_roles(2, dns=False) == ("worker0", "worker1", "crypto", "udp")
    assert topology.child_roles(1, dns=True)[-1] == topology.DNS
    for dns in (False, True):
        roles = (topology.SUPERVISOR, *topology.child_roles(2, dns=dns))
        assert topology.stats_roles(2, dns=dns) == roles
    assert [topology.process_name(r) for r in topology.child_roles(2, dns=True)] == [
        "fzgw-tun0",
        "fzgw-tun1",
        "fzgw-crypto",
        "fzgw-udp",
        "fzgw-dns",
    ]
    assert topology.worker_index("worker12") == 12
    assert topology.worker_index(topology.CRYPTO) is None


# ---- the ring topology -------------------------------------------------------------------


@pytest.fixture
def rings() -> Iterator[RingTopology]:
    made = RingTopology.create(workers=2, mtu=1280)
    try:
        yield made
    finally:
        made.close()


def test_every_ring_has_its_layout_name_and_room_for_a_client_mtu(rings: RingTopology) -> None:
    named = rings.by_name()
    assert tuple(sorted(named)) == tuple(sorted(topology.ring_names(2)))
    assert named[topology.worker_to_crypto(1)] is rings.workers_to_crypto[1]
    assert named[topology.CRYPTO_TO_UDP] is rings.crypto_to_udp
    assert rings.workers_to_crypto[0].max_message >= MIN_INNER_PACKET
    assert rings.udp_to_crypto.max_message > rings.workers_to_crypto[0].max_message
    crypto = rings.for_crypto()
    assert crypto.from_udp is rings.udp_to_crypto
    assert list(crypto.to_workers) == list(rings.crypto_to_workers)


def test_a_child_waits_on_what_it_consumes_and_on_room_in_what_it_produces(
    rings: RingTopology,
) -> None:
    fds = rings.worker_fds(1)
    assert fds.rings == (
        rings.crypto_to_workers[1].consumer_fd(),
        rings.workers_to_crypto[1].producer_fd(),
    )
    assert fds.other == (
        rings.crypto_to_workers[1].producer_fd(),
        rings.workers_to_crypto[1].consumer_fd(),
    )
    crypto = rings.crypto_fds()
    assert len(crypto.rings) == len(crypto.other) == 2 * (1 + 2)
    assert rings.udp_to_crypto.consumer_fd() in crypto.rings
    assert rings.crypto_to_udp.producer_fd() in crypto.rings


# ---- health ------------------------------------------------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(["sleep", "60"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def _running_child(role: str, pid: int) -> Child:
    child = Child(role, lambda: None)
    child.pid, child.ready = pid, True
    return child


def test_problems_say_which_children_do_not_run_their_loop(
    sleeper: subprocess.Popen[bytes],
) -> None:
    waiting, stopped, starting = (
        Child("a", lambda: None),
        Child("b", lambda: None),
        Child("c", lambda: None),
    )
    waiting.restart_at = 5.0
    starting.pid = sleeper.pid
    healthy = _running_child("d", sleeper.pid)
    health = Health({c.role: c for c in (waiting, stopped, starting, healthy)})
    assert health.problems() == [
        ("a", "is waiting to restart"),
        ("b", "is not running"),
        ("c", "is starting"),
    ]


def _watched(role: str, pid: int, monkeypatch: pytest.MonkeyPatch) -> tuple[Health, Child, _Clock]:
    """A running child just forked, watched by Health on a clock the test moves."""
    clock = _Clock()
    monkeypatch.setattr(health_module, "time", clock)
    child = _running_child(role, pid)
    health = Health({child.role: child})
    health.forked(child)
    return health, child, clock


def test_a_child_awake_without_progress_is_killed_after_the_hang_timeout(
    sleeper: subprocess.Popen[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    health, child, clock = _watched("worker0", sleeper.pid, monkeypatch)
    child.heartbeat.beat()  # awake: a loop turn never takes seconds
    assert not health.kill_hung()  # the first look only records its progress
    clock.now += HANG_TIMEOUT / 2
    assert health.kill_hung()  # no progress since, with work waiting: stuck
    assert sleeper.poll() is None
    assert health.problems() == [("worker0", "has work waiting but makes no progress")]
    clock.now += HANG_TIMEOUT
    health.kill_hung()
    assert sleeper.wait(timeout=5) < 0  # SIGKILLed: its exit restarts it


def test_a_child_that_makes_progress_is_not_hung(
    sleeper: subprocess.Popen[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    health, child, clock = _watched("udp", sleeper.pid, monkeypatch)
    for _ in range(4):
        child.heartbeat.beat()
        health.kill_hung()
        clock.now += HANG_TIMEOUT
    assert sleeper.poll() is None
    assert health.problems() == []


# ---- reload ------------------------------------------------------------------------------


class _Reloaded:
    """ConfigReload's collaborators, recording what it asked for."""

    def __init__(self, tmp_path: Path, text: str) -> None:
        self.path = tmp_path / "gw.toml"
        self.path.write_text(text)
        self.supervisor_end, crypto_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.crypto_end = crypto_end
        crypto_end.setblocking(False)
        config = load_config(self.path)
        self.running = Running(config, config.interface.mtu)
        self.restarted: list[str] = []
        self.ports: list[int] = []
        runtime = SimpleNamespace(control=self.supervisor_end)
        self.dns_child = Child(topology.DNS, lambda: None) if config.dns else None
        self.crypto_child = Child(topology.CRYPTO, lambda: None)
        self.reload = ConfigReload(
            self.path,
            running=self.running,
            runtime=cast(Runtime, runtime),
            crypto_child=self.crypto_child,
            dns_child=self.dns_child,
            restart=self._restart,
            move_port=self.ports.append,
            follow_mtu=lambda mtu: None,
        )

    def _restart(self, child: Child) -> bool:
        self.restarted.append(child.role)
        return True

    def told_crypto(self) -> list[CryptoEvent]:
        return list(receive_to_crypto(self.crypto_end))

    def reload_and_acknowledge(self) -> None:
        """SIGHUP, and the crypto process applies what it was sent."""
        self.reload.reload()
        for event in self.told_crypto():
            if isinstance(event, ConfigArrived):
                self.reload.acknowledged(ReloadDone(event.generation, applied=True))

    def close(self) -> None:
        self.supervisor_end.close()
        self.crypto_end.close()


def test_a_reload_moves_the_port_and_tells_the_crypto_process(tmp_path: Path) -> None:
    gateway = _Reloaded(tmp_path, _config_text(51820))
    gateway.path.write_text(_config_text(51821))
    gateway.reload.reload()
    assert gateway.ports == [51821]
    assert gateway.running.config.interface.listen_port == 51821
    assert gateway.told_crypto() == [ConfigArrived(1, gateway.running.config)]
    gateway.close()


def test_an_invalid_file_changes_nothing(tmp_path: Path) -> None:
    gateway = _Reloaded(tmp_path, _config_text())
    before = gateway.running.config
    gateway.path.write_text("[interface\n")
    gateway.reload.reload()
    assert gateway.running.config is before
    assert gateway.told_crypto() == []
    gateway.close()


def test_the_dns_process_restarts_only_when_its_inputs_change(tmp_path: Path) -> None:
    dns = '[dns]\nport = 5353\nupstreams = ["192.0.2.53"]\n'
    gateway = _Reloaded(tmp_path, _config_text(dns=dns))
    gateway.reload_and_acknowledge()  # the same file
    assert gateway.restarted == []
    gateway.path.write_text(_config_text(dns=dns.replace("192.0.2.53", "192.0.2.54")))
    gateway.reload_and_acknowledge()
    assert gateway.restarted == [topology.DNS]
    gateway.close()


def test_the_dns_process_restarts_only_once_the_crypto_process_applied_the_reload(
    tmp_path: Path,
) -> None:
    """Ordered by acknowledgement: the crypto process's mappings follow the new resources
    before a DNS process built from them hands out answers."""
    dns = '[dns]\nport = 5353\nupstreams = ["192.0.2.53"]\n'
    gateway = _Reloaded(tmp_path, _config_text(dns=dns))
    gateway.path.write_text(_config_text(dns=dns.replace("192.0.2.53", "192.0.2.54")))
    gateway.reload.reload()
    gateway.path.write_text(_config_text(dns=dns.replace("192.0.2.53", "192.0.2.55")))
    gateway.reload.reload()
    assert gateway.restarted == []  # sent, not yet applied
    # What waits for the acknowledgement holds no key: children forked meanwhile inherit it.
    assert PRIVATE not in pickle.dumps(gateway.reload._dns_built_from)
    first, second = gateway.told_crypto()
    assert isinstance(first, ConfigArrived) and isinstance(second, ConfigArrived)
    gateway.reload.acknowledged(ReloadDone(first.generation, applied=True))
    assert gateway.restarted == []  # an earlier reload's answer
    gateway.reload.acknowledged(ReloadDone(second.generation, applied=True))
    assert gateway.restarted == [topology.DNS]
    gateway.reload.acknowledged(ReloadDone(second.generation, applied=True))
    assert gateway.restarted == [topology.DNS]  # once
    gateway.close()


def test_a_crypto_process_that_could_not_read_the_reload_is_restarted_then_dns_follows(
    tmp_path: Path,
) -> None:
    dns = '[dns]\nport = 5353\nupstreams = ["192.0.2.53"]\n'
    gateway = _Reloaded(tmp_path, _config_text(dns=dns))
    gateway.path.write_text(_config_text(dns=dns.replace("192.0.2.53", "192.0.2.54")))
    gateway.reload.reload()
    gateway.reload.acknowledged(ReloadDone(gateway.reload.generation, applied=False))
    assert gateway.restarted == [topology.CRYPTO]
    gateway.reload.crypto_started()  # the supervisor forked it from the new config
    assert gateway.restarted == [topology.CRYPTO, topology.DNS]
    gateway.close()


# ---- the children ------------------------------------------------------------------------


def _fd() -> socket.socket:
    return socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)


def test_children_keep_only_their_own_fds(tmp_path: Path, rings: RingTopology) -> None:
    path = tmp_path / "gw.toml"
    path.write_text(_config_text())
    config = load_config(path)
    queues, udp, control, uapi = [_fd(), _fd()], _fd(), _fd(), _fd()
    runtime = SimpleNamespace(
        tun=SimpleNamespace(queues=queues),
        rings=rings,
        udp=udp,
        control_child=control,
        uapi=SimpleNamespace(fds=lambda: [uapi.fileno()]),
        runstate=None,
        mappings=None,
    )
    targets = ChildTargets(2, cast(Runtime, runtime), Running(config, 1280))
    children = targets.children
    assert tuple(children) == topology.child_roles(2, dns=False)
    worker1 = children["worker1"].fds()
    assert queues[1].fileno() in worker1.other
    assert queues[0].fileno() not in worker1.other + worker1.rings
    assert udp.fileno() in children["udp"].fds().other
    crypto = children["crypto"].fds()
    assert {control.fileno(), uapi.fileno()} <= set(crypto.other)
    assert udp.fileno() not in crypto.other
    targets._drop_keys(keep_peers=True)  # as the DNS process does after fork
    dropped = targets.running.config
    assert dropped.interface.private_key == bytes(32)
    assert [p.preshared_key for p in dropped.peers] == [None]
    assert dropped.peers[0].allowed_ips == config.peers[0].allowed_ips
    targets._drop_keys(keep_peers=False)  # as a worker does
    assert targets.running.config.peers == ()
    for sock in (*queues, udp, control, uapi):
        sock.close()


# ---- the status line ---------------------------------------------------------------------


def test_rates_read_in_the_unit_that_fits() -> None:
    assert _rate(512, 1.0) == "512 B/s"
    assert _rate(3 * 1024 * 1024, 2.0) == "1.5 MiB/s"
    assert _rate(5 * 1024**3, 1.0) == "5.0 GiB/s"


def test_stats_blocks_follow_the_roles(tmp_path: Path) -> None:
    region = StatsRegion.create(f"fzo-parts-{tmp_path.name}", workers=2, max_peers=4)
    try:
        assert region.roles == topology.stats_roles(2, dns=False)
        assert region.ring_names == topology.ring_names(2)
    finally:
        region.close()
        region.unlink()
