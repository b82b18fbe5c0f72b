"""The test bed: hosts, peers and gateways that the tests, the benchmarks and `make demo` share.

    netns.py           network namespaces (test hosts), veth pairs, run-unique names, wait_for
    wgpeer.py          wireguard-go peers driven by `wg`
    addresses.py       the address plan and the clients' keys (pure data)
    gateway_config.py  the gateway's TOML config (the one writer)
    gateways.py        the gateway under test: firezone-gw (the one way to find it) or wireguard-go
    topology.py        clients -> gateway -> resource namespaces; one teardown
    iperf.py           iperf3 runs across a topology
    wire.py            two sans-I/O Devices on an in-memory wire (core tests and bench_core)
    tun_packets.py     IPv4 packet builders and parsers (TUN tests and bench_tunio)

Support code, not shipped in the wheel. It imports the gateway's packages but never tests/
or bench/, so both can import it without a cycle. Everything that makes a namespace, a
process, a socket or a file removes it in close(), even after a failure.
"""
