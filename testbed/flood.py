"""A handshake flood: initiations with a valid mac1 for the gateway's key and no mac2 (anyone
who knows the key can make them), sent at a fixed rate. Runs as its own process in a
namespace: `python -m testbed.flood HOST PORT KEY_BASE64 RATE SECONDS` prints how many it sent.
Used by bench/bench_flood.py and tests/test_flood_shared_address.py."""

from __future__ import annotations

import socket
import sys
import time

from gateway.keys import decode_key
from testbed.wire import flood_initiation

DISTINCT_MESSAGES = 1024


def flood(target: tuple[str, int], gateway_public_key: bytes, rate: int, seconds: float) -> int:
    """Send `rate` initiations a second (0: as fast as possible) for `seconds`; how many."""
    messages = [flood_initiation(gateway_public_key) for _ in range(DISTINCT_MESSAGES)]
    sent = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        start = time.monotonic()
        while (elapsed := time.monotonic() - start) < seconds:
            due = int(elapsed * rate) if rate else sent + 256
            while sent < due:
                try:
                    sock.sendto(messages[sent % DISTINCT_MESSAGES], target)
                except BlockingIOError:
                    break  # the socket buffer is full: the next round goes on
                sent += 1
            if rate:
                time.sleep(0.005)
    return sent


def main(argv: list[str]) -> int:
    host, port, key, rate, seconds = argv
    print(flood((host, int(port)), decode_key(key), int(rate), float(seconds)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
