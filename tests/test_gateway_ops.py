"""Operations on the running gateway (issue 8), end to end in network namespaces.

Each test starts the real `firezone-gw` (supervisor, TUN workers, crypto and UDP processes)
between wireguard-go clients and a resource host and drives it the way an operator would:
`firezone-gw show`, /metrics and the health endpoints, sd_notify, SIGHUP, the stock `wg`
tool, and moving or deleting the TUN device.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.telemetry import runtime_dir
from testbed.addresses import GATEWAY_TUNNEL_ADDR, LISTEN_PORT, client_specs
from testbed.gateway_config import GatewayPeer
from testbed.gateways import FirezoneGateway, firezone_executable
from testbed.netns import unique_name, wait_for
from testbed.topology import Topology
from testbed.wgpeer import wg_genkey, wg_pubkey
from tests.test_systemd_unit import INSTALLED_BINARY

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "firezone-gw.service"
GATEWAY_TUNNEL = f"{GATEWAY_TUNNEL_ADDR}/24"

# Wireguard-go clients, the gateway's namespace and a resource; the test writes the gateway's
# config and starts it (start()), so it can rewrite the config and pick command and environment.
Lab = Topology[FirezoneGateway]


def new_lab(clients: int = 1) -> Lab:
    return Topology(FirezoneGateway(workers=2), client_specs(clients))


def start(lab: Lab, argv: list[str] | None = None, env: dict[str, str] | None = None) -> None:
    """Start the gateway with the config as written; return once /readyz says ready."""
    lab.backend.launch(lab.gateway_ns, argv, env)
    lab.backend.wait_ready()


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
def lab1() -> Iterator[Lab]:
    lab = new_lab(1)
    try:
        yield lab
    finally:
        lab.close()


def scrape(lab: Lab) -> Samples:
    status, text = lab.backend.http_get("/metrics")
    assert status == 200
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def show(lab: Lab, *args: str) -> str:
    proc = subprocess.run(
        [firezone_executable(), "--config", str(lab.backend.config_path), "show", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def started(lab: Lab, clients: int = 1) -> Lab:
    lab.backend.write_config([lab.peer(i) for i in range(clients)])
    start(lab)
    for i in range(clients):
        lab.connect_client(i)
        lab.wait_ping(i)
    return lab


# ---- show and /metrics ------------------------------------------------------------------


def test_show_reads_the_running_gateway(lab1: Lab) -> None:
    started(lab1)
    key = lab1.clients[0].public_key
    wait_for(lambda: "latest handshake" in show(lab1), timeout=5)
    table = show(lab1)
    assert f"interface: {lab1.backend.ifname}" in table
    assert f"public key: {lab1.backend.public_key}" in table
    assert f"listening port: {LISTEN_PORT}" in table
    assert f"peer: {key}" in table
    assert "endpoint: 10.201.0.2:" in table
    data = json.loads(show(lab1, "--json"))
    assert data["interface"]["public_key"] == lab1.backend.public_key
    (peer,) = data["peers"]
    assert peer["public_key"] == key
    before = peer["rx_bytes"]
    assert before > 0
    assert peer["last_handshake"] > time.time() - 60
    assert lab1.ping(0, count=5, interval=0.05, size=1000)

    def grew() -> bool:
        return bool(json.loads(show(lab1, "--json"))["peers"][0]["rx_bytes"] >= before + 5000)

    wait_for(grew, timeout=5)


def test_show_without_a_running_gateway_fails_clearly(tmp_path: Path) -> None:
    lab_config = tmp_path / "gateway.toml"
    key_file = tmp_path / "private.key"
    key_file.write_text(wg_genkey() + "\n")
    key_file.chmod(0o600)
    name = unique_name("fzo2n")
    lab_config.write_text(f'[interface]\nname = "{name}"\nprivate_key_file = "{key_file}"\n')
    proc = subprocess.run(
        [firezone_executable(), "--config", str(lab_config), "show"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 1
    assert f"no running firezone-gw for interface {name}" in proc.stderr


def test_metrics_move_with_traffic_and_drops_by_reason(lab1: Lab) -> None:
    started(lab1)
    key = lab1.clients[0].public_key
    peer = {"device": lab1.backend.ifname, "public_key": key}
    handshake = "wireguard_peer_last_handshake_seconds"
    wait_for(lambda: scrape(lab1).get((handshake, tuple(sorted(peer.items())))), timeout=5)
    before = scrape(lab1)
    assert value(before, "wireguard_peer_last_handshake_seconds", **peer) > time.time() - 60
    assert value(before, "firezone_gw_handshakes_completed_total") >= 1
    assert lab1.ping(0, count=10, interval=0.02, size=1000)
    # A source address outside the client's allowed IPs: decrypted, then dropped.
    lab1.clients[0].ns.ip("addr", "add", "10.77.0.99/24", "dev", lab1.clients[0].ifname)
    assert not lab1.ping(0, count=3, interval=0.05, source="10.77.0.99")

    def moved() -> bool:
        after = scrape(lab1)
        rx = "wireguard_peer_receive_bytes_total"
        tx = "wireguard_peer_transmit_bytes_total"
        udp = "firezone_gw_udp_bytes_total"
        drops = "firezone_gw_drops_total"
        return (
            value(after, rx, **peer) >= value(before, rx, **peer) + 10_000
            and value(after, tx, **peer) >= value(before, tx, **peer) + 10_000
            and value(after, udp, direction="receive") > value(before, udp, direction="receive")
            and value(after, udp, direction="transmit") > value(before, udp, direction="transmit")
            and value(after, drops, reason="allowed_ips")
            >= value(before, drops, reason="allowed_ips") + 3
        )

    wait_for(moved, timeout=5)
    after = scrape(lab1)
    for role in ("supervisor", "crypto", "udp", "worker0", "worker1"):
        assert value(after, "firezone_gw_process_resident_memory_bytes", process=role) > 0
        assert value(after, "firezone_gw_process_cpu_seconds_total", process=role) >= 0


def test_readyz_follows_children_and_healthz_stays_up(lab1: Lab) -> None:
    started(lab1)
    assert lab1.backend.readyz() == (200, "ready\n")
    assert lab1.backend.http_get("/healthz")[0] == 200
    udp = lab1.backend.child_pid("udp")
    os.kill(udp, signal.SIGSTOP)
    try:
        wait_for(lambda: lab1.backend.readyz()[0] == 503, timeout=5)
        _, reason = lab1.backend.readyz()
        assert reason.strip() == "udp is stopped"
        assert lab1.backend.http_get("/healthz")[0] == 200
    finally:
        os.kill(udp, signal.SIGCONT)
    wait_for(lambda: lab1.backend.readyz()[0] == 200, timeout=5)
    lab1.gateway_ns.ip("link", "set", lab1.backend.ifname, "down")
    assert lab1.backend.readyz() == (503, f"TUN device {lab1.backend.ifname} is down\n")
    lab1.gateway_ns.ip("link", "set", lab1.backend.ifname, "up")
    assert lab1.backend.readyz() == (200, "ready\n")
    # A killed child is restarted from the supervisor's resources; sessions survive a
    # worker restart, and readiness comes back once it reported ready.
    os.kill(lab1.backend.child_pid("worker0"), signal.SIGKILL)
    wait_for(lambda: value(scrape(lab1), "firezone_gw_child_restarts_total") == 1, timeout=5)
    wait_for(lambda: lab1.backend.readyz()[0] == 200, timeout=5)
    assert lab1.ping(0, count=3, interval=0.05)


# ---- sd_notify under the unit's own command line -------------------------------------


class NotifyListener:
    """A unix datagram socket standing in for systemd's $NOTIFY_SOCKET."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[str] = []
        self._seen = 0  # messages wait_for() has looked at

    def _receive(self, seconds: float) -> list[str]:
        got = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                got.append(self.sock.recv(4096).decode())
            except TimeoutError:
                break
        self.messages += got
        return got

    def collect(self, seconds: float) -> list[str]:
        """Messages arriving within `seconds`; wait_for() looks only at later ones."""
        got = self._receive(seconds)
        self._seen = len(self.messages)
        return got

    def wait_for(self, prefix: str, timeout: float) -> str:
        """The next message (not yet looked at) starting with `prefix`."""
        deadline = time.monotonic() + timeout
        while True:
            while self._seen < len(self.messages):
                message = self.messages[self._seen]
                self._seen += 1
                if message.startswith(prefix):
                    return message
            if time.monotonic() >= deadline:
                raise TimeoutError(f"no {prefix!r} within {timeout}s; got {self.messages}")
            self._receive(0.2)

    def close(self) -> None:
        self.sock.close()


def unit_command(lab: Lab) -> list[str]:
    """ExecStart of systemd/firezone-gw.service, pointed at this venv and the lab config."""
    (line,) = [x for x in UNIT.read_text().splitlines() if x.startswith("ExecStart=")]
    argv = shlex.split(line.removeprefix("ExecStart="))
    replace = {
        INSTALLED_BINARY: firezone_executable(),
        "/etc/firezone-gw/gateway.toml": str(lab.backend.config_path),
    }
    return [replace.get(arg, arg) for arg in argv]


def test_sd_notify_ready_status_watchdog_stopping(lab1: Lab, tmp_path: Path) -> None:
    listener = NotifyListener(tmp_path / "notify.sock")
    try:
        lab1.backend.write_config([lab1.peer(0)])
        # WATCHDOG_USEC=1s: the supervisor pings every half second while healthy.
        env = {"NOTIFY_SOCKET": str(listener.path), "WATCHDOG_USEC": "1000000"}
        start(lab1, unit_command(lab1), env)
        ready = listener.wait_for("READY=1", timeout=5)
        # Nothing before READY=1 but the fds kept in the fd store (gateway/dataplane/handover.py).
        before = listener.messages[: listener.messages.index(ready)]
        assert [m for m in before if not m.startswith("FDSTORE=1\nFDNAME=")] == []
        assert "STATUS=1 peers (0 active)" in ready
        lab1.connect_client(0)
        lab1.wait_ping(0)
        assert lab1.ping(0, count=20, interval=0.05, size=1000)
        status = listener.wait_for("STATUS=1 peers (1 active), in ", timeout=5)
        assert re.search(r"in [1-9][\d.]* (B|KiB)/s", status), status
        assert listener.wait_for("WATCHDOG=1", timeout=2)
        # A stopped child is not healthy: no WATCHDOG=1 until it runs again.
        udp = lab1.backend.child_pid("udp")
        os.kill(udp, signal.SIGSTOP)
        try:
            listener.collect(0.7)  # a ping already under way may still arrive
            assert "WATCHDOG=1" not in listener.collect(1.5)
        finally:
            os.kill(udp, signal.SIGCONT)
        listener.wait_for("WATCHDOG=1", timeout=3)
        # SIGHUP (ExecReload=): RELOADING=1, then READY=1 once the config is applied.
        lab1.backend.signal(signal.SIGHUP)
        reloading = listener.wait_for("RELOADING=1", timeout=3)
        assert re.fullmatch(r"RELOADING=1\nMONOTONIC_USEC=\d+", reloading)
        listener.wait_for("READY=1", timeout=3)
        assert lab1.backend.stop() == 0
        listener.collect(0.2)
        removals = [m for m in listener.messages if m.startswith("FDSTOREREMOVE=1\nFDNAME=")]
        assert [m for m in listener.messages if m not in removals][-1].startswith("STOPPING=1")
        # A clean stop empties the fd store: the next start is a fresh one.
        removed = {m.rpartition("=")[2] for m in removals}
        assert removed >= {"tun0", "udp", "state", "timestamps", "sessions"}, removals
    finally:
        listener.close()


def test_device_lines_have_the_shape_of_a_wireguard_go_device(lab1: Lab) -> None:
    """Scripts read `ip -stats link show` by line (wireguard-go's tests/netns.sh takes the RX
    counters from the fourth line): an extra line such as an alias would break them."""
    started(lab1)
    client = lab1.clients[0]
    ours = lab1.gateway_ns.ip("-stats", "link", "show", "dev", lab1.backend.ifname).splitlines()
    theirs = client.ns.ip("-stats", "link", "show", "dev", client.ifname).splitlines()
    assert len(ours) == len(theirs), (ours, theirs)

    def shape(line: str) -> tuple[str, int]:
        """A line's kind (its first word; any counter line is "N") and its word count."""
        words = line.split()
        return ("N" if words[0].isdigit() else words[0], len(words))

    assert [shape(line) for line in ours[1:]] == [shape(line) for line in theirs[1:]]
    assert theirs[2].split()[0] == "RX:"
    rx_bytes, rx_packets = map(int, ours[3].split()[:2])
    assert rx_bytes > 0
    assert rx_packets > 0  # the pings came out of the tunnel into the device


def test_tun_mtu_raised_at_run_time_carries_8000_byte_packets_both_ways(lab1: Lab) -> None:
    """Slots hold 1500 bytes; an 8028-byte packet spans six of them on every ring."""
    started(lab1)
    client = lab1.clients[0]
    lab1.gateway_ns.ip("link", "set", lab1.backend.ifname, "mtu", "9000")  # not through the config
    client.ns.ip("link", "set", client.ifname, "mtu", "9000")
    for host in (lab1.gateway_ns, client.ns):
        host.run("ip", "route", "flush", "cache", check=False)
    # From the client: its request crosses UDP -> crypto -> worker -> TUN whole (-M do), the
    # gateway's reply TUN -> worker -> crypto -> UDP; only the outer UDP is fragmented.
    assert lab1.ping(0, count=3, interval=0.1, dest=GATEWAY_TUNNEL_ADDR, size=8000)
    samples = scrape(lab1)
    assert value(samples, "firezone_gw_drops_total", reason="too_big") == 0
    assert lab1.backend.exited() is None


def test_planted_fifos_hang_neither_start_up_nor_show(lab1: Lab) -> None:
    """Any local user can mkfifo in /dev/shm, only the gateway's user in its runtime dir;
    neither start-up nor `show` may block on one (each step below has a deadline)."""
    gw = lab1.backend
    gw.write_config([lab1.peer(0)])
    rundir = runtime_dir.runtime_dir()
    os.close(runtime_dir.make_dir(rundir))
    in_shm = [Path(f"/dev/shm/fzgw.{gw.ifname}.1.{n}") for n in ("worker0_to_crypto", "stats")]
    left = rundir / f"fzgw.{gw.ifname}.1.stats"  # pid 1 runs: looks like a live gateway's
    late = rundir / f"fzgw.{gw.ifname}.{os.getpid()}.stats"
    try:
        for fifo in (*in_shm, left):
            os.mkfifo(fifo, 0o600)
        start(lab1)  # raises after the readiness timeout
        assert not left.exists()  # not a segment: removed at start, never opened to read
        os.mkfifo(late, 0o600)
        lab1.connect_client(0)
        lab1.wait_ping(0)
        table = show(lab1)  # a 30 s timeout
        assert f"interface: {gw.ifname}" in table
        assert all(fifo.exists() for fifo in (*in_shm, late))  # /dev/shm is not ours to clean
    finally:
        for fifo in (*in_shm, left, late):
            fifo.unlink(missing_ok=True)


def test_gateway_has_no_resource_tracker_process(lab1: Lab) -> None:
    started(lab1)
    assert lab1.backend.proc is not None
    family = psutil.Process(lab1.backend.proc.pid).children(recursive=True)
    commands = [" ".join(p.cmdline()) for p in family]
    assert len(commands) == 4  # worker0, worker1, crypto, udp
    assert not [c for c in commands if "resource_tracker" in c], commands


def test_sighup_reload_applies_peer_changes_and_keeps_sessions() -> None:
    lab = new_lab(3)
    try:
        a, b, c = 0, 1, 2
        lab.backend.write_config([lab.peer(a), lab.peer(c)])
        start(lab)
        for i in (a, b, c):
            lab.connect_client(i)
        lab.wait_ping(a)
        lab.wait_ping(c)
        assert not lab.ping(b, count=2, interval=0.2)  # not a peer yet
        gateway_key = lab.backend.public_key
        handshake_a = lab.clients[a].peers()[gateway_key].latest_handshake
        assert handshake_a > 0
        # A steady ping from A across both reloads: not one reply may be lost.
        steady = subprocess.Popen(
            lab.clients[a].ns.exec_argv(
                "ping", "-c", "30", "-i", "0.1", "-W", "1", "-q", "10.88.0.2"
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        try:
            # Reload 1: B added, C's allowed IPs changed to another address.
            c_new = "10.77.0.44"
            lab.backend.write_config(
                [lab.peer(a), lab.peer(b), GatewayPeer(lab.clients[c].public_key, [f"{c_new}/32"])]
            )
            lab.backend.signal(signal.SIGHUP)
            wait_for(lambda: "reload: 3 peers" in lab.backend.log_text(), timeout=5)
            lab.wait_ping(b, timeout=10)
            assert not lab.ping(c, count=2, interval=0.1)  # old source now outside its IPs
            lab.clients[c].ns.ip("addr", "add", f"{c_new}/24", "dev", lab.clients[c].ifname)
            assert lab.ping(c, count=2, interval=0.1, source=c_new)
            # Reload 2: B removed again; it is cut off at once.
            lab.backend.write_config(
                [lab.peer(a), GatewayPeer(lab.clients[c].public_key, [f"{c_new}/32"])]
            )
            lab.backend.signal(signal.SIGHUP)
            wait_for(lambda: "reload: 2 peers" in lab.backend.log_text(), timeout=5)
            assert not lab.ping(b, count=3, interval=0.1)
            # An invalid config is refused with its errors; the running one stays.
            lab.backend.config_path.write_text('[interface]\nname = "x"\nlisten_port = 0\n')
            lab.backend.signal(signal.SIGHUP)
            wait_for(lambda: "reload refused" in lab.backend.log_text(), timeout=5)
            assert "listen_port" in lab.backend.log_text()
            assert lab.ping(c, count=2, interval=0.1, source=c_new)
            output, _ = steady.communicate(timeout=15)
        finally:
            if steady.poll() is None:
                steady.kill()
                steady.wait()
        assert steady.returncode == 0, output
        assert b" 0% packet loss" in output, output
        # Unchanged peer, unchanged session: no new handshake on either side.
        assert lab.clients[a].peers()[gateway_key].latest_handshake == handshake_a
        peers = lab.backend.wg("show", lab.backend.ifname, "latest-handshakes")
        assert lab.clients[a].public_key in peers
        assert lab.clients[b].public_key not in peers
    finally:
        lab.close()


# ---- the stock `wg` tool ----------------------------------------------------------------

BIG_ALLOWED_IPS = 20_000


def _max_rtt_ms(ping_output: str) -> float:
    match = re.search(r"= [\d.]+/[\d.]+/([\d.]+)/", ping_output)
    assert match, ping_output
    return float(match.group(1))


def _big_peer(net: int) -> tuple[str, str]:
    """A new peer key and BIG_ALLOWED_IPS /32s in 10.<net>.0.0/16."""
    ips = ", ".join(f"10.{net}.{i // 250}.{i % 250 + 1}/32" for i in range(BIG_ALLOWED_IPS))
    return wg_pubkey(wg_genkey()), ips


def test_wg_configures_an_empty_gateway_and_copes_with_20k_allowed_ips(tmp_path: Path) -> None:
    lab = new_lab(1)
    try:
        lab.backend.write_config([], addresses=())  # no peers, no addresses
        start(lab)
        client = lab.clients[0]
        # Key, port and peers through `wg`, the address through `ip`, as with wireguard-go.
        key = wg_genkey()
        key_file = tmp_path / "gw.key"
        key_file.write_text(key + "\n")
        key_file.chmod(0o600)
        lab.backend.wg(
            "set", lab.backend.ifname, "private-key", str(key_file), "listen-port", "51821"
        )
        lab.backend.wg(
            "set", lab.backend.ifname, "peer", client.public_key, "allowed-ips", "10.77.0.2/32"
        )
        lab.backend.public_key = wg_pubkey(key)
        assert (
            lab.backend.wg("show", lab.backend.ifname, "public-key").strip()
            == lab.backend.public_key
        )
        conf = lab.backend.wg("showconf", lab.backend.ifname)
        assert "ListenPort = 51821" in conf
        assert "AllowedIPs = 10.77.0.2/32" in conf
        # setconf (replaces every peer, as with wireguard-go) with a 20k-prefix peer.
        big_key, big_ips = _big_peer(100)
        big_conf = tmp_path / "big.conf"
        big_conf.write_text(f"{conf}\n[Peer]\nPublicKey = {big_key}\nAllowedIPs = {big_ips}\n")
        began = time.monotonic()
        lab.backend.wg("setconf", lab.backend.ifname, str(big_conf))
        setconf_seconds = time.monotonic() - began
        allowed = lab.backend.wg("show", lab.backend.ifname, "allowed-ips")
        big_line = next(line for line in allowed.splitlines() if line.startswith(big_key))
        assert len(big_line.split("\t")[1].split()) == BIG_ALLOWED_IPS

        lab.gateway_ns.ip("addr", "add", GATEWAY_TUNNEL, "dev", lab.backend.ifname)
        lab.connect_client(0, port=51821)
        lab.wait_ping(0)

        # Listen port changed while running: traffic continues once the client follows.
        lab.backend.wg("set", lab.backend.ifname, "listen-port", "51822")
        wait_for(lambda: ":51822 " in lab.gateway_ns.run("ss", "-Hlun"), timeout=5)
        assert ":51821 " not in lab.gateway_ns.run("ss", "-Hlun")
        client.set("peer", lab.backend.public_key, "endpoint", "10.201.0.1:51822")
        lab.wait_ping(0, timeout=5)
        shown = show(lab)
        assert "listening port: 51822" in shown
        assert (
            f"public key: {lab.backend.public_key}" in shown
        )  # the key `wg` set, not the config's
        handshake = client.peers()[lab.backend.public_key].latest_handshake

        # addconf of another 20k prefixes under a steady ping: how long the loop stalls.
        more_key, more_ips = _big_peer(101)
        more_conf = tmp_path / "more.conf"
        more_conf.write_text(f"[Peer]\nPublicKey = {more_key}\nAllowedIPs = {more_ips}\n")
        pings = subprocess.Popen(
            client.ns.exec_argv("ping", "-c", "100", "-i", "0.02", "-W", "5", "-q", "10.88.0.2"),
            stdout=subprocess.PIPE,
            text=True,
        )
        time.sleep(0.3)
        began = time.monotonic()
        lab.backend.wg("addconf", lab.backend.ifname, str(more_conf))
        addconf_seconds = time.monotonic() - began
        output, _ = pings.communicate(timeout=30)
        stall_ms = _max_rtt_ms(output)
        print(
            f"\n{BIG_ALLOWED_IPS} allowed IPs: wg setconf {setconf_seconds:.2f} s, wg addconf"
            f" {addconf_seconds:.2f} s; largest ping RTT during addconf {stall_ms:.0f} ms"
        )
        assert " 0% packet loss" in output, output

        # syncconf back to the small config: the big peers go, the client's session stays.
        small_conf = tmp_path / "small.conf"
        small_conf.write_text(
            lab.backend.wg("showconf", lab.backend.ifname).split("\n[Peer]")[0] + "\n"
        )
        peer_conf = f"[Peer]\nPublicKey = {client.public_key}\nAllowedIPs = 10.77.0.2/32\n"
        small_conf.write_text(small_conf.read_text() + peer_conf)
        lab.backend.wg("syncconf", lab.backend.ifname, str(small_conf))
        assert lab.backend.wg("show", lab.backend.ifname, "peers").split() == [client.public_key]
        assert lab.ping(0, count=3, interval=0.05)
        assert client.peers()[lab.backend.public_key].latest_handshake == handshake

        # A crashed crypto process comes back with what `wg` set, not the empty config file.
        crypto = lab.backend.child_pid("crypto")
        os.kill(crypto, signal.SIGKILL)
        wait_for(lambda: lab.backend.child_pid("crypto") not in (0, crypto), timeout=5)
        wait_for(
            lambda: client.public_key in lab.backend.wg("show", lab.backend.ifname, "peers"),
            timeout=5,
        )
        assert (
            lab.backend.wg("show", lab.backend.ifname, "public-key").strip()
            == lab.backend.public_key
        )
        assert "AllowedIPs = 10.77.0.2/32" in lab.backend.wg("showconf", lab.backend.ifname)
        # The client still holds the old session; a fresh one shows traffic flows again.
        client.set("peer", lab.backend.public_key, "remove")
        client.add_peer(
            lab.backend.public_key,
            allowed_ips="10.77.0.0/24,10.88.0.0/24",
            endpoint="10.201.0.1:51822",
        )
        client.ns.ip("route", "replace", "10.88.0.0/24", "dev", client.ifname)
        lab.wait_ping(0, timeout=10)
    finally:
        lab.close()


def test_sighup_reload_applies_listen_port_mtu_and_addresses() -> None:
    lab = new_lab(1)
    try:
        lab.backend.write_config([lab.peer(0)])
        start(lab)
        lab.connect_client(0)
        lab.wait_ping(0)
        extra = "10.77.9.1/24"
        lab.backend.write_config(
            [lab.peer(0)], (GATEWAY_TUNNEL, extra), listen_port=51829, mtu=1380
        )
        lab.backend.signal(signal.SIGHUP)
        wait_for(lambda: "has MTU 1380" in lab.backend.log_text(), timeout=5)
        assert "mtu 1380" in lab.gateway_ns.ip("-o", "link", "show", lab.backend.ifname)
        assert extra in lab.gateway_ns.ip("-o", "addr", "show", "dev", lab.backend.ifname)
        wait_for(lambda: ":51829 " in lab.gateway_ns.run("ss", "-Hlun"), timeout=5)
        lab.clients[0].set("peer", lab.backend.public_key, "endpoint", "10.201.0.1:51829")
        lab.wait_ping(0, timeout=5)  # same session, new port
        # Taking the address out of the config takes it off the device.
        lab.backend.write_config([lab.peer(0)], listen_port=51829, mtu=1380)
        lab.backend.signal(signal.SIGHUP)
        wait_for(
            lambda: extra not in lab.gateway_ns.ip("-o", "addr", "show", "dev", lab.backend.ifname),
            5,
        )
        assert lab.ping(0, count=2, interval=0.1)
    finally:
        lab.close()


# ---- the TUN device moved or deleted from outside ---------------------------------------


@pytest.mark.parametrize("moved", [False, True], ids=["in-place", "moved-netns"])
def test_tun_device_moved_keeps_forwarding_and_deleted_stops_cleanly(
    lab1: Lab, moved: bool
) -> None:
    started(lab1)
    home = lab1.gateway_ns
    if moved:
        # The standard WireGuard test setup: the device goes where the inner traffic lives,
        # the UDP socket stays where it was bound.
        home = lab1.hosts.add("fzo2in")
        lab1.gateway_ns.ip("link", "set", lab1.backend.ifname, "netns", home.name)
        home.ip("addr", "add", GATEWAY_TUNNEL, "dev", lab1.backend.ifname)
        home.ip("link", "set", lab1.backend.ifname, "up")
        lab1.wait_ping(0, dest="10.77.0.1", timeout=5)
        assert lab1.backend.readyz() == (200, "ready\n")
        assert lab1.ping(0, count=3, interval=0.05, dest="10.77.0.1")
    assert lab1.backend.proc is not None
    family = [
        lab1.backend.proc.pid,
        *(lab1.backend.child_pid(r) for r in ("crypto", "udp", "worker0", "worker1")),
    ]
    assert lab1.backend.socket_path.exists()
    home.ip("link", "del", lab1.backend.ifname)
    assert lab1.backend.proc.wait(10) == 0, lab1.backend.log_text()
    log = lab1.backend.log_text()
    assert "TUN device gone" in log  # a worker saw EBADFD and exited with its own status
    assert f"TUN device {lab1.backend.ifname} was deleted: shutting down" in log
    assert not lab1.backend.socket_path.exists()
    assert not list(runtime_dir.runtime_dir().glob(f"fzgw.{lab1.backend.ifname}.*"))
    assert not [pid for pid in family if psutil.pid_exists(pid)]
