"""Test-only driver: our sans-I/O Device over a real UDP socket, answering or sending pings.

Run inside a test namespace: `python -m tests.wireguard.core_driver --mode ping|pong ...`.
It prints "ready" once bound, then "ok" (and exits 0) when the echo exchange succeeded.
"""

from __future__ import annotations

import argparse
import socket
import sys
import time
from ipaddress import ip_network

from gateway.wireguard.device import Device
from testbed.wire import icmp_echo, parse_echo


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=["ping", "pong"], required=True)
    parser.add_argument("--private-key", required=True, help="hex")
    parser.add_argument("--peer", required=True, help="hex public key")
    parser.add_argument("--psk", default="", help="hex")
    parser.add_argument("--listen", type=int, required=True)
    parser.add_argument("--endpoint", default="", help="host:port of the peer")
    parser.add_argument("--inner", required=True, help="our inner address")
    parser.add_argument("--peer-inner", required=True)
    parser.add_argument("--timeout", type=float, default=12.0)
    args = parser.parse_args()

    now = time.monotonic()
    device = Device(bytes.fromhex(args.private_key), unix_time_offset=time.time() - now)
    endpoint = None
    if args.endpoint:
        host, port = args.endpoint.rsplit(":", 1)
        endpoint = (host, int(port))
    device.upsert_peer(
        bytes.fromhex(args.peer),
        preshared_key=bytes.fromhex(args.psk) if args.psk else None,
        endpoint=endpoint,
        allowed_ips=[ip_network(args.peer_inner)],
        now=now,
    )
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", args.listen))  # noqa: S104 # inside a private test namespace
    print("ready", flush=True)

    ident, payload = 0x4242, b"firezone-interop" * 4
    if args.mode == "ping":
        peer_inner = args.peer_inner.split("/")[0]
        request = icmp_echo(
            args.inner, peer_inner, reply=False, ident=ident, seq=1, payload=payload
        )
        assert device.handle_packet(request, now) is None  # no session yet: staged

    deadline = time.monotonic() + args.timeout
    while (now := time.monotonic()) < deadline:
        device.tick(now)
        for (host, port), data in device.take_transmits():
            sock.sendto(data, (host, port))
        wake = device.next_deadline()
        sock.settimeout(max(0.01, min(deadline, wake or deadline) - now))
        try:
            data, src = sock.recvfrom(65535)
        except TimeoutError:
            continue
        inner = device.handle_datagram(data, (src[0], src[1]), time.monotonic())
        for (host, port), out in device.take_transmits():
            sock.sendto(out, (host, port))
        if inner is None:
            continue
        echo = parse_echo(bytes(inner))
        if echo is None:
            continue
        if args.mode == "ping" and echo.reply and echo.ident == ident and echo.payload == payload:
            print("ok", device.counters, dict(device.drops), flush=True)
            return 0
        if args.mode == "pong" and not echo.reply:
            reply = icmp_echo(echo.dst, echo.src, reply=True, ident=echo.ident, seq=echo.seq,
                              payload=echo.payload)  # fmt: skip
            sent = device.handle_packet(reply, time.monotonic())
            assert sent is not None, f"no session to answer on: {device.drops}"
            sock.sendto(sent[1], sent[0])
            print("ok", device.counters, dict(device.drops), flush=True)
            return 0
    print("timeout", device.counters, dict(device.drops), flush=True)
    return 1


if __name__ == "__main__":
    sys.exit(main())
