"""RecentFlows: the flows a peer sent, keyed alike from its packet and from an error's quote."""

from __future__ import annotations

import ipaddress

from gateway.policy.recent_flows import RecentFlows, flow_of, quoted_flow
from ippacket import IpPacket
from ippacket.build import icmp_echo_request, tcp_packet, udp_packet
from ippacket.icmp_errors import Unreachable, destination_unreachable

CLIENT = ipaddress.ip_address("100.64.0.2")
CLIENT6 = ipaddress.ip_address("fd00:64::2")
HOST = ipaddress.ip_address("10.98.0.5")
HOST6 = ipaddress.ip_address("fd00:98::5")


def _quote(packet: IpPacket) -> memoryview:
    router = HOST if packet.version == 4 else HOST6
    error = destination_unreachable(packet, Unreachable.PORT, source=router)
    offset = error.l4_offset
    assert offset is not None
    return error.data[offset + 8 :]


def test_a_quote_keys_like_the_packet_it_quotes() -> None:
    for packet in (
        tcp_packet(CLIENT, HOST, 40000, 443),
        udp_packet(CLIENT6, HOST6, 5353, 53, b"q"),
        icmp_echo_request(CLIENT, HOST, 77, 1, b"ping"),
        icmp_echo_request(CLIENT6, HOST6, 78, 1, b"ping6"),
    ):
        assert quoted_flow(_quote(packet)) == flow_of(packet)


def test_another_port_or_echo_id_is_another_flow() -> None:
    assert flow_of(tcp_packet(CLIENT, HOST, 40000, 443)) != flow_of(
        tcp_packet(CLIENT, HOST, 40000, 444)
    )
    assert flow_of(icmp_echo_request(CLIENT, HOST, 1, 1)) != flow_of(
        icmp_echo_request(CLIENT, HOST, 2, 1)
    )


def test_short_quotes_are_no_flow() -> None:
    assert quoted_flow(b"\x45" + bytes(10)) is None
    assert quoted_flow(b"\x60" + bytes(30)) is None


def test_one_peers_many_flows_never_push_out_anothers() -> None:
    recent = RecentFlows(per_peer=4)
    b_flow = flow_of(tcp_packet(CLIENT6, HOST6, 1, 443))
    recent.add("b", b_flow)
    flows = [flow_of(udp_packet(CLIENT, HOST, port, 53)) for port in range(1, 1001)]
    for flow in flows:
        recent.add("a", flow)
    assert recent.has("b", b_flow)
    assert not recent.has("a", b_flow)
    assert [recent.has("a", f) for f in flows[-5:]] == [False, True, True, True, True]


def test_a_flow_seen_again_is_kept_as_the_most_recent() -> None:
    recent = RecentFlows(per_peer=2)
    first, second, third = (flow_of(udp_packet(CLIENT, HOST, p, 53)) for p in (1, 2, 3))
    recent.add("a", first)
    recent.add("a", second)
    recent.add("a", first)
    recent.add("a", third)
    assert (recent.has("a", first), recent.has("a", second)) == (True, False)


def test_the_number_of_peers_is_bounded() -> None:
    recent = RecentFlows(per_peer=2, max_peers=3)
    flow = flow_of(udp_packet(CLIENT, HOST, 1, 53))
    for peer in range(10):
        recent.add(peer, flow)
    assert recent.has(9, flow)
    assert sum(recent.has(peer, flow) for peer in range(10)) <= 3
