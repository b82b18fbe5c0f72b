"""Numbered-UDP tools for the end-to-end tests, run inside namespaces as a script.

    python tests/e2e_udp.py server --bind ADDR --port P
        Echoes every datagram back to its sender. For each sender it remembers the sequence
        numbers seen; a datagram b"report" gets back JSON {"received": n, "inversions": k}
        about that sender (inversions = datagrams that came after a higher number).
    python tests/e2e_udp.py order --dest ADDR --port P --count N --flows F
        Sends N numbered datagrams spread over F sockets (F flows), collects the echoes and
        prints JSON per flow: what the server saw and what came back, with inversions.
    python tests/e2e_udp.py probe --dest ADDR --port P --seconds S [--interval I]
                                  [--stop-after-outage O]
        Sends a numbered datagram every I seconds for S seconds and prints the
        CLOCK_MONOTONIC times (system-wide, so comparable across namespaces) of the echoes.
        With O, stops early, 0.5 s after echoes came back from an outage of O seconds.

Only the stdlib, so it runs with any python3 and needs no package on sys.path.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import selectors
import socket
import struct
import time

SEQ = struct.Struct("!I")
PAYLOAD = 64  # bytes per numbered datagram (sequence number + padding)
REPORT = b"report"
MAX_DATAGRAM = 65535


def _family(address: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def _numbered(seq: int) -> bytes:
    return SEQ.pack(seq).ljust(PAYLOAD, b"\0")


def _inversions(numbers: list[int]) -> int:
    highest, count = -1, 0
    for n in numbers:
        if n < highest:
            count += 1
        highest = max(highest, n)
    return count


def serve(bind: str, port: int) -> None:
    sock = socket.socket(_family(bind), socket.SOCK_DGRAM)
    sock.bind((bind, port))
    seen: dict[tuple[str, int], list[int]] = {}
    while True:
        data, sender = sock.recvfrom(MAX_DATAGRAM)
        key = (sender[0], sender[1])
        if data == REPORT:
            numbers = seen.pop(key, [])
            report = {"received": len(numbers), "inversions": _inversions(numbers)}
            sock.sendto(json.dumps(report).encode(), sender)
            continue
        if len(data) >= SEQ.size:
            seen.setdefault(key, []).append(SEQ.unpack_from(data)[0])
        sock.sendto(data, sender)


def _drain(sock: socket.socket, into: list[int]) -> None:
    while True:
        try:
            data = sock.recv(MAX_DATAGRAM)
        except BlockingIOError:
            return
        if len(data) >= SEQ.size and data != REPORT:
            into.append(SEQ.unpack_from(data)[0])


def order(dest: str, port: int, count: int, flows: int) -> None:
    socks = [socket.socket(_family(dest), socket.SOCK_DGRAM) for _ in range(flows)]
    back: list[list[int]] = [[] for _ in range(flows)]
    for sock in socks:
        sock.connect((dest, port))
        sock.setblocking(False)
    # Paced (~5000 datagrams/s) so the test checks order, not how much a burst overflows.
    burst = 5  # datagrams per flow between drains
    for start in range(0, count, burst * flows):
        for seq in range(start, min(start + burst * flows, count)):
            socks[seq % flows].send(_numbered(seq // flows))
        time.sleep(0.004)
        for sock, got in zip(socks, back, strict=True):
            _drain(sock, got)
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        time.sleep(0.05)
        for sock, got in zip(socks, back, strict=True):
            _drain(sock, got)
    result = []
    for flow, (sock, got) in enumerate(zip(socks, back, strict=True)):
        sock.setblocking(True)
        sock.settimeout(2)
        server: object = None
        for _ in range(3):
            sock.send(REPORT)
            try:
                reply = sock.recv(MAX_DATAGRAM)
            except TimeoutError:
                continue
            if reply.startswith(b"{"):
                server = json.loads(reply)
                break
        result.append(
            {
                "sent": len(range(flow, count, flows)),
                "server": server,
                "returned": len(got),
                "returned_inversions": _inversions(got),
            }
        )
    print(json.dumps(result))


def probe(dest: str, port: int, seconds: float, interval: float, outage: float | None) -> None:
    sock = socket.socket(_family(dest), socket.SOCK_DGRAM)
    sock.connect((dest, port))
    sock.setblocking(False)
    selector = selectors.DefaultSelector()
    selector.register(sock, selectors.EVENT_READ)
    replies: list[float] = []
    start = time.monotonic()
    end = start + seconds
    next_send, seq = start, 0
    while (now := time.monotonic()) < end:
        if now >= next_send:
            # e.g. no route while the tunnel is down: keep probing
            with contextlib.suppress(OSError):
                sock.send(_numbered(seq))
            seq += 1
            next_send += interval
        for _ in selector.select(max(0.0, next_send - time.monotonic())):
            while True:
                try:
                    sock.recv(MAX_DATAGRAM)
                except BlockingIOError:
                    break
                except OSError:  # ICMP errors surface here on a connected socket
                    break
                now = time.monotonic()
                if outage is not None and replies and now - replies[-1] >= outage:
                    end = min(end, now + 0.5)
                replies.append(now)
    print(json.dumps({"start": start, "end": time.monotonic(), "sent": seq, "replies": replies}))


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("server")
    s.add_argument("--bind", required=True)
    s.add_argument("--port", type=int, required=True)
    o = sub.add_parser("order")
    p = sub.add_parser("probe")
    for cmd in (o, p):
        cmd.add_argument("--dest", required=True)
        cmd.add_argument("--port", type=int, required=True)
    o.add_argument("--count", type=int, default=5000)
    o.add_argument("--flows", type=int, default=4)
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--interval", type=float, default=0.02)
    p.add_argument("--stop-after-outage", type=float, default=None)
    args = parser.parse_args()
    if args.mode == "server":
        serve(args.bind, args.port)
    elif args.mode == "order":
        order(args.dest, args.port, args.count, args.flows)
    else:
        probe(args.dest, args.port, args.seconds, args.interval, args.stop_after_outage)


if __name__ == "__main__":
    main()
