"""Interop, the proof: our Device against a real wireguard-go in network namespaces.

wireguard-go (configured with `wg`) runs in one namespace; our core runs in the other over a
real UDP socket (tests/wireguard/core_driver.py). An ICMP echo encrypted by one side must
be decrypted and answered by the other, both as initiator and responder, v4 and v6, +-PSK.
"""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path

import pytest

from testbed.netns import Hosts, veth
from testbed.wgpeer import WireGuardGo, wg_genkey, wg_pubkey

ROOT = Path(__file__).resolve().parents[2]
GO_UNDERLAY, CORE_UNDERLAY = "10.203.0.1", "10.203.0.2"
GO_PORT, CORE_PORT = 51830, 51831
# (wireguard-go's inner address, ours, host prefix length, the on-link subnet length)
INNER = {4: ("10.77.0.1", "10.77.0.2", 32, 24), 6: ("fd77::1", "fd77::2", 128, 64)}

pytestmark = pytest.mark.netns


def _hex(b64: str) -> str:
    return base64.b64decode(b64).hex()


def _run_driver(ns_core: object, args: list[str]) -> subprocess.Popen[str]:
    cmd = ["ip", "netns", "exec", ns_core.name, sys.executable, "-m",  # type: ignore[attr-defined]  # NetNS
           "tests.wireguard.core_driver", *args]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == "ready", line + proc.stdout.read()
    return proc


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("with_psk", [False, True])
@pytest.mark.parametrize("initiator", ["wireguard-go", "core"])
def test_interop_with_wireguard_go(
    netns_hosts: Hosts, family: int, with_psk: bool, initiator: str
) -> None:
    ns_go, ns_core = netns_hosts.add("fzc"), netns_hosts.add("fzc")
    veth(ns_go, ns_core, f"{GO_UNDERLAY}/24", f"{CORE_UNDERLAY}/24")
    core_private = wg_genkey()
    core_public = wg_pubkey(core_private)
    psk = wg_genkey() if with_psk else None
    go_inner, core_inner, plen, subnet = INNER[family]
    go = WireGuardGo(ns_go, tag="fzc")
    proc: subprocess.Popen[str] | None = None
    try:
        go.listen(GO_PORT)
        go.add_peer(
            core_public,
            allowed_ips=f"{core_inner}/{plen}",
            endpoint=f"{CORE_UNDERLAY}:{CORE_PORT}" if initiator == "wireguard-go" else None,
            preshared_key=psk,
        )
        go.up(f"{go_inner}/{subnet}")
        args = [
            "--private-key", _hex(core_private), "--peer", _hex(go.public_key),
            "--listen", str(CORE_PORT), "--inner", core_inner,
            "--peer-inner", f"{go_inner}/{plen}",
        ]  # fmt: skip
        if psk:
            args += ["--psk", _hex(psk)]
        if initiator == "core":
            proc = _run_driver(ns_core, [*args, "--mode", "ping",
                                         "--endpoint", f"{GO_UNDERLAY}:{GO_PORT}"])  # fmt: skip
        else:
            proc = _run_driver(ns_core, [*args, "--mode", "pong"])
            ping = subprocess.run(
                ns_go.exec_argv("ping", f"-{family}", "-c", "1", "-W", "10", core_inner),
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            assert "1 received" in ping.stdout, ping.stdout + ping.stderr + go.log()
        out, _ = proc.communicate(timeout=20)
        assert proc.returncode == 0, out + go.log()
        assert out.startswith("ok"), out
        # Timeouts leave room for REKEY_TIMEOUT retransmits on a busy shared machine.
        go.wait_handshake(core_public, timeout=5)
        dump = go.peers()[core_public]
        assert dump.rx_bytes > 0
        assert dump.tx_bytes > 0
        assert dump.endpoint == f"{CORE_UNDERLAY}:{CORE_PORT}"
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        go.close()
