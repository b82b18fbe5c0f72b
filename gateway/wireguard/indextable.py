"""The receiver-index table: one entry per local index we handed out, as wireguard-go's
device/indextable.go.

An index names either our pending handshake initiation with a peer (`keypair` None) or
one of a peer's transport keypairs. The Device owns the table (a dict from index to entry)
and keeps it in step with each peer's handshake and keypairs; keypairs do not point back to
their peer, so keypair.py and peer.py do not import each other.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.wireguard.keypair import Keypair
    from gateway.wireguard.peer import Peer


class IndexEntry:
    __slots__ = ("keypair", "peer")

    def __init__(self, peer: Peer, keypair: Keypair | None = None) -> None:
        self.peer = peer
        self.keypair = keypair
