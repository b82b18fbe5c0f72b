"""Issue #11 end to end: a host-name endpoint with keepalive used to kill the crypto process.

The real gateway starts with `endpoint = "localhost:..."`, `persistent_keepalive = 1` and a
host-name metrics listen address; it must keep running (no child restarted) and answer `wg`.
"""

from __future__ import annotations

import signal
import time

from testbed.addresses import LISTEN_PORT
from testbed.gateway_config import GatewayPeer
from testbed.gateways import FirezoneGateway
from testbed.netns import wait_for
from testbed.topology import Topology
from testbed.wgpeer import wg_genkey, wg_pubkey

UNUSED_PORT = LISTEN_PORT + 100  # nobody listens there: initiations are sent and lost


def test_host_name_endpoint_with_keepalive_keeps_running() -> None:
    topo = Topology(FirezoneGateway(workers=2), [])
    lab = topo.backend
    try:
        peer_key = wg_pubkey(wg_genkey())
        lab.write_config([GatewayPeer(peer_key, ["10.77.0.2/32"])])
        text = lab.config_path.read_text()
        text = text.replace(
            'allowed_ips = ["10.77.0.2/32"]',
            'allowed_ips = ["10.77.0.2/32"]\n'
            f'endpoint = "localhost:{UNUSED_PORT}"\npersistent_keepalive = 1',
        ).replace('listen = "127.0.0.1:', 'listen = "localhost:')
        lab.config_path.write_text(text)
        lab.launch(topo.gateway_ns)
        lab.wait_ready()
        crypto_pid = lab.child_pid("crypto")
        wait_for(lambda: f"127.0.0.1:{UNUSED_PORT}" in lab.wg("show", lab.ifname), timeout=10)
        lab.signal(signal.SIGHUP)  # the reload resolves the name again
        wait_for(lambda: f"reloaded {lab.config_path}" in lab.log_text(), timeout=10)
        # Keepalive 1 s: give the crypto process several chances to send (it crashed at once).
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            assert not lab.exited(), lab.log_text()
            time.sleep(0.5)
        assert lab.child_pid("crypto") == crypto_pid, lab.log_text()
        dump = lab.wg("show", lab.ifname, "dump").splitlines()
        assert dump[1].split("\t")[2] == f"127.0.0.1:{UNUSED_PORT}"
        assert lab.readyz()[0] == 200
    finally:
        topo.close()
