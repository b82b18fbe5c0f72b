"""The gateway runs as the systemd unit runs it: a non-root uid holding only CAP_NET_ADMIN and
CAP_NET_BIND_SERVICE (for the DNS server on port 53).

The gateway namespace of the operations lab starts `firezone-gw` through util-linux's
setpriv with exactly the unit's privileges; a wireguard-go client pings through it and root's
`wg` and `firezone-gw show` still reach it. As under the unit, the gateway binds its control
socket in its own runtime directory and root links /run/wireguard/<ifname>.sock to it first
(`link-control-socket`, the unit's ExecStartPre=+): the gateway's view of /run/wireguard is a
root-owned 0755 directory bind-mounted in the gateway's own mount namespace (`ip netns exec`
makes one), so the host's /run/wireguard is never changed; so is a /dev/net/tun with the
mode udev gives it on a standard host (0666; the unit binds the host's node).
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from gateway.uapi.server import CONTROL_DIR_ENV
from testbed.addresses import GATEWAY_TUNNEL_ADDR, RESOURCE_ADDR, client_specs
from testbed.gateways import FirezoneGateway, firezone_executable
from testbed.netns import WIREGUARD_RUN_DIR
from testbed.topology import Topology
from tests.test_systemd_unit import unit_directives

pytestmark = pytest.mark.netns

# No account has these ids; the gateway needs none (nothing looks its user up by name).
GATEWAY_UID = 64_723
CAP_NET_ADMIN = 1 << 12
CAP_NET_BIND_SERVICE = 1 << 10
UNIT_CAPS = CAP_NET_ADMIN | CAP_NET_BIND_SERVICE
REPO = Path(__file__).resolve().parent.parent

# Runs as root inside `ip netns exec` (a private mount namespace), then drops to the uid.
# /dev/net/tun as a standard host has it (udev: mode 0666), whatever this host's mode is.
LAUNCH = """
uid=$1 run_dir=$2; shift 2
mount --bind "$run_dir" /run/wireguard || exit 97
mount -t tmpfs -o mode=0755,size=16k fzgw-dev-net /dev/net || exit 97
mknod -m 0666 /dev/net/tun c 10 200 || exit 97
"$@" link-control-socket || exit 96
exec setpriv --reuid="$uid" --regid="$uid" --clear-groups \
    --inh-caps=+net_admin,+net_bind_service --ambient-caps=+net_admin,+net_bind_service \
    --bounding-set=-all,+net_admin,+net_bind_service "$@" run
"""


ASK_PORT_53 = """
import sys
import dns.message, dns.query
dns.query.udp(dns.message.make_query("example.test", "A"), sys.argv[1], port=53, timeout=15)
print("answered")
"""


def _reachable_by_others(path: str) -> bool:
    """Whether a user who is neither owner nor in the group may run `path` (every parent
    directory searchable, the file executable)."""
    real = Path(os.path.realpath(path))
    return all(p.stat().st_mode & 0o001 for p in [real, *real.parents])


def unprivileged_python() -> tuple[list[str], dict[str, str]]:
    """An interpreter the gateway's uid can run with this environment's packages.

    The venv's interpreter may live below a directory only root can enter (pyenv in /root):
    then the system's interpreter of the same version gets the venv's site-packages.
    """
    if _reachable_by_others(sys.executable):
        return [sys.executable], {}
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    system = shutil.which(version, path="/usr/local/bin:/usr/bin")
    if system is None or not _reachable_by_others(system):
        pytest.fail(f"no {version} that uid {GATEWAY_UID} may run: install one in /usr/bin")
    path = os.pathsep.join([str(REPO), *site.getsitepackages()])
    return [system], {"PYTHONPATH": path}


def status_fields(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as status:
        return dict(line.rstrip("\n").split(":\t", 1) for line in status if ":\t" in line)


Lab = Topology[FirezoneGateway]


@pytest.fixture
def lab() -> Iterator[Lab]:
    lab = Topology(FirezoneGateway(workers=2), client_specs(1))
    try:
        yield lab
    finally:
        lab.close()


def test_gateway_forwards_as_non_root_with_only_cap_net_admin(lab: Lab) -> None:
    unit = unit_directives()
    assert (
        unit["AmbientCapabilities"]
        == unit["CapabilityBoundingSet"]
        == ["CAP_NET_ADMIN CAP_NET_BIND_SERVICE"]
    )
    # What the unit sets up: config and key readable by the gateway's user (the key its own,
    # 0600); /run/wireguard root's (0755, tmpfiles.d); a runtime directory of its own
    # (RuntimeDirectory=firezone-gw) where it also binds its control socket.
    gw = lab.backend
    # With the DNS server for peers on port 53: the reason the unit holds CAP_NET_BIND_SERVICE.
    gw.write_config([lab.peer(0)], extra_toml=f'[dns]\nupstreams = ["{RESOURCE_ADDR}"]\n')
    run_dir = gw.dir / "run-wireguard"
    runtime_dir = gw.dir / "runtime"
    run_dir.mkdir(mode=0o755)
    runtime_dir.mkdir(mode=0o750)
    for path in (gw.dir, gw.config_path, gw.key_file, runtime_dir):
        os.chown(path, GATEWAY_UID, GATEWAY_UID)
    assert WIREGUARD_RUN_DIR.is_dir()  # the clients' wireguard-go made it: the mount point

    python, env = unprivileged_python()
    gateway = [*python, "-m", "gateway", "--config", str(gw.config_path), "--workers", "2"]
    env |= {
        "PYTHONDONTWRITEBYTECODE": "1",
        "FIREZONE_GW_RUNTIME_DIR": str(runtime_dir),
        CONTROL_DIR_ENV: str(runtime_dir),
    }
    argv = ["sh", "-c", LAUNCH, "launch", str(GATEWAY_UID), str(run_dir), *gateway]
    gw.launch(lab.gateway_ns, argv, env)
    gw.wait_ready()
    lab.connect_client(0)
    lab.wait_ping(0)
    assert lab.ping(0, count=3)
    # The DNS server bound port 53 on the tunnel address and answers (nothing listens at the
    # upstream, so the answer is SERVFAIL: an answer all the same).
    answer = lab.client_ns(0).run(sys.executable, "-c", ASK_PORT_53, GATEWAY_TUNNEL_ADDR)
    assert answer.strip() == "answered", answer

    # Every process of the gateway: the uid, and the unit's two capabilities, no others.
    assert gw.proc is not None
    supervisor = psutil.Process(gw.proc.pid)
    processes = [supervisor, *supervisor.children(recursive=True)]
    assert len(processes) >= 5  # supervisor, 2 workers, crypto, UDP
    for proc in processes:
        fields = status_fields(proc.pid)
        assert fields["Uid"].split() == [str(GATEWAY_UID)] * 4, proc
        assert fields["Gid"].split() == [str(GATEWAY_UID)] * 4, proc
        assert fields["Groups"].strip() == "", proc
        for caps in ("CapEff", "CapPrm", "CapBnd", "CapAmb"):
            assert int(fields[caps], 16) == UNIT_CAPS, (proc, caps, fields[caps])

    # The control socket is the gateway's, in its own directory; /run/wireguard holds only
    # root's link to it, and root's `wg` uses it through the link (in the gateway's view of
    # /run/wireguard, as every `wg` on a systemd host sees it).
    sock = runtime_dir / f"{gw.ifname}.sock"
    link = run_dir / f"{gw.ifname}.sock"
    assert (sock.stat().st_uid, sock.stat().st_mode & 0o077) == (GATEWAY_UID, 0)
    assert link.is_symlink()
    assert link.readlink() == sock
    assert (run_dir.stat().st_uid, run_dir.stat().st_mode & 0o7777) == (0, 0o755)
    assert [p.name for p in run_dir.iterdir()] == [link.name]  # the gateway made nothing here
    shown = subprocess.run(
        ["nsenter", f"--target={gw.proc.pid}", "--mount", "--net", "wg", "show", gw.ifname],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    assert f"peer: {lab.clients[0].public_key}" in shown
    assert "latest handshake" in shown

    # Root's `firezone-gw show` reads the counters of a gateway running as another user.
    proc = subprocess.run(
        [firezone_executable(), "--config", str(gw.config_path), "show"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={**os.environ, "FIREZONE_GW_RUNTIME_DIR": str(runtime_dir)},
    )
    assert proc.returncode == 0, proc.stderr
    assert lab.clients[0].public_key in proc.stdout

    assert gw.stop() == 0, gw.log_text()
    assert not sock.exists()  # removed on the way out, as root's would be
    # The unit's ExecStopPost=+ removes the link (in the same view of /run/wireguard).
    unlink = 'mount --bind "$1" /run/wireguard && exec "$2" unlink-control-socket'
    lab.gateway_ns.run(
        "env",
        f"{CONTROL_DIR_ENV}={runtime_dir}",
        "sh",
        "-c",
        unlink,
        "unlink",
        str(run_dir),
        firezone_executable(),
    )
    assert list(run_dir.iterdir()) == []
