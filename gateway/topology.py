"""The gateway's processes and the rings between them, by name: the one place the names are
spelled.

The supervisor starts its children by these roles, keeps a heartbeat slot for each, and the
stats segment (gateway/telemetry/stats/) lays out one counter block per role and per ring
in the order given here. Ring names say which way a ring carries: `worker0_to_crypto` is the
first TUN worker's ring into the crypto process.
"""

from __future__ import annotations

SUPERVISOR = "supervisor"
CRYPTO = "crypto"
UDP = "udp"
DNS = "dns"

UDP_TO_CRYPTO = "udp_to_crypto"
CRYPTO_TO_UDP = "crypto_to_udp"

_PROCESS_NAMES = {CRYPTO: "fzgw-crypto", UDP: "fzgw-udp", DNS: "fzgw-dns"}


def worker(index: int) -> str:
    """The role of the TUN worker on queue `index`."""
    return f"worker{index}"


def worker_index(role: str) -> int | None:
    """The queue index of a TUN worker's role; None for the other roles."""
    return int(role.removeprefix("worker")) if role.startswith("worker") else None


def worker_to_crypto(index: int) -> str:
    return f"worker{index}_to_crypto"


def crypto_to_worker(index: int) -> str:
    return f"crypto_to_worker{index}"


def child_roles(workers: int, *, dns: bool) -> tuple[str, ...]:
    """The supervisor's children in start order: the TUN workers, the crypto and UDP
    processes, and the DNS process when the config has a DNS server."""
    return (*(worker(i) for i in range(workers)), CRYPTO, UDP, *((DNS,) if dns else ()))


def stats_roles(workers: int, *, dns: bool) -> tuple[str, ...]:
    """The stats segment's process blocks in layout order: the supervisor and its children."""
    return (SUPERVISOR, *child_roles(workers, dns=dns))


def ring_names(workers: int) -> tuple[str, ...]:
    """Every ring in layout order: each worker's pair, then the crypto <-> UDP pair."""
    names: list[str] = []
    for i in range(workers):
        names += [worker_to_crypto(i), crypto_to_worker(i)]
    return (*names, CRYPTO_TO_UDP, UDP_TO_CRYPTO)


def process_name(role: str) -> str:
    """The name a child gives itself (/proc/self/comm: ps, top, the journal)."""
    index = worker_index(role)
    return _PROCESS_NAMES[role] if index is None else f"fzgw-tun{index}"
