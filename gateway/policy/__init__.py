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
from gateway.policy.filters import Filter, PortRange, Protocol, parse_filter, parse_ports
from gateway.policy.icmp_limit import IcmpErrorLimiter
from gateway.policy.resources import MAX_NAME_LENGTH, Resource, parse_resource_address

__all__ = [
    "ALLOW_UNCOUNTED",
    "DROP",
    "MAX_NAME_LENGTH",
    "Action",
    "Decision",
    "Filter",
    "IcmpErrorLimiter",
    "Policy",
    "PortRange",
    "Protocol",
    "Resource",
    "parse_filter",
    "parse_ports",
    "parse_resource_address",
]
