"""`make demo`: a client (wireguard-go), firezone-gw and a resource, each in a namespace.

Shows a ping and a short iperf3 run from the client through the gateway to the resource,
then removes everything it made.
"""

from __future__ import annotations

import sys

from testbed.addresses import RESOURCE_ADDR
from testbed.gateways import BackendUnavailable, FirezoneGateway
from testbed.topology import topology


def main() -> int:
    print("building namespaces: client (wireguard-go) -> gateway (firezone-gw) -> resource")
    try:
        with topology(FirezoneGateway(workers=2)) as topo:
            client = topo.client_ns(0)
            print(f"\n$ ping -c 3 {RESOURCE_ADDR}   (from the client, through the tunnel)")
            print(client.run("ping", "-c", "3", "-i", "0.2", RESOURCE_ADDR), end="")
            port = str(topo.client_specs[0].iperf_port)
            print(f"\n$ iperf3 -c {RESOURCE_ADDR} -t 3")
            print(client.run("iperf3", "-c", RESOURCE_ADDR, "-p", port, "-t", "3", timeout=30))
            print("$ wg show   (on the client)")
            print(client.run("wg", "show", topo.clients[0].ifname), end="")
    except BackendUnavailable as exc:
        print(f"demo failed: {exc}\n{exc.log}", file=sys.stderr)
        return 1
    print("\ncleaned up: namespaces, interfaces and processes removed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
