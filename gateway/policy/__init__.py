"""Resources and per-peer grants: which destinations behind the gateway each peer may reach.

Pure decision logic, no I/O: the data plane parses a packet, asks `Policy.inbound` (peer to
resource) or `Policy.outbound` (resource to peer) and acts on the `Decision` it gets back
(forward and count, drop and count, or answer with ICMP "administratively prohibited").
Firezone's gateway semantics; see docs/ARCHITECTURE.md.
"""

from gateway.policy.engine import (
    ALLOW_UNCOUNTED,
    DROP,
    Action,
    Decision,
    Policy,
)
from gateway.policy.icmp_limit import IcmpErrorLimiter

__all__ = [
    "ALLOW_UNCOUNTED",
    "DROP",
    "Action",
    "Decision",
    "IcmpErrorLimiter",
    "Policy",
]
