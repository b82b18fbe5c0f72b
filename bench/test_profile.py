"""The profiling harness's parsing and arithmetic (no network needed)."""

from __future__ import annotations

import json

from bench.bench_profile import CaseResult, packets_of, process_table
from bench.probes import ProcSample, parse_link_stats, parse_snmp_udp, rtt_summary, top_lines
from testbed.iperf import IperfResult

SNMP = """Ip: Forwarding DefaultTTL
Ip: 1 64
Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors
Udp: 100 0 7 90 7 0
UdpLite: InDatagrams NoPorts
UdpLite: 0 0
"""


def test_snmp_udp_counters_are_read_by_name() -> None:
    udp = parse_snmp_udp(SNMP)
    assert udp["InErrors"] == 7
    assert udp["RcvbufErrors"] == 7
    assert udp["OutDatagrams"] == 90
    assert "UdpLite" not in str(udp)


def test_link_stats_take_drops_per_interface() -> None:
    text = json.dumps(
        [
            {"ifname": "lo", "stats64": {"rx": {"packets": 1}, "tx": {"packets": 1}}},
            {
                "ifname": "fzgw0",
                "stats64": {
                    "rx": {"packets": 10, "dropped": 0, "errors": 0},
                    "tx": {"packets": 20, "dropped": 5, "errors": 1},
                },
            },
        ]
    )
    links = parse_link_stats(text)
    assert links["fzgw0"]["tx_dropped"] == 5
    assert links["fzgw0"]["tx_errors"] == 1
    assert links["lo"]["rx_dropped"] == 0


def test_top_lines_count_where_samples_ended() -> None:
    raw = (
        "<module> (/x/gateway/cli/__init__.py:10);run_worker (/x/dataplane/worker.py:45);"
        "_write (/x/tunio/linux.py:130) 60\n"
        "<module> (/x/gateway/cli/__init__.py:10);run_worker (/x/dataplane/worker.py:45);"
        "_write (/x/tunio/linux.py:130) 20\n"
        "<module> (/x/gateway/cli/__init__.py:10);sleep (/x/dataplane/sleeper.py:54) 20\n"
        "garbage line\n"
    )
    assert top_lines(raw) == [
        ("_write (tunio/linux.py:130)", 0.8),
        ("sleep (dataplane/sleeper.py:54)", 0.2),
    ]
    assert top_lines("") == []


def _case() -> CaseResult:
    counters = {
        "worker0": {"tun_rx_packets": 300, "tun_tx_packets": 700},
        "crypto": {},
        "udp": {"udp_rx_packets": 700, "udp_tx_packets": 300},
    }
    processes = {
        "worker0": ProcSample(0.002, 0.001, 10, 1, 50, 20),
        "crypto": ProcSample(0.004, 0.0, 5, 0, 1, 1),
        "udp": ProcSample(0.001, 0.001, 20, 0, 0, 0),
    }
    return CaseResult("gw", "up", 1.0, IperfResult(1e6, 125_000), processes, counters, {}, 1000)


def test_each_process_is_divided_by_the_packets_it_handled() -> None:
    case = _case()
    assert packets_of("worker0", case) == 1000
    assert packets_of("udp", case) == 1000
    assert packets_of("crypto", case) == 700 + 300  # decrypted + encrypted
    assert packets_of("supervisor", case) == case.tunnel_datagrams


def test_process_table_adds_up_to_the_whole_gateway() -> None:
    table = process_table(_case())
    # worker0: 2 ms user / 1000 packets = 2 µs, 3 µs in all per tunnel datagram.
    assert "| worker0 | 1000 | 2.00 | 1.00 | 3.00 | 10 | 100.00 | 1 | 0.05 | 0.02 |" in table
    # all: 7 ms user + 2 ms system over 1000 tunnel datagrams.
    assert "| **all** | 1000 | 7.00 | 2.00 | 9.00 | 35 |" in table


def test_rtt_summary_gives_median_and_p99() -> None:
    rtts = [float(ms) for ms in range(1, 101)]  # 1..100 ms
    assert rtt_summary(rtts) == "ping p50 50.500 ms, p99 99.010 ms (100 replies)"
    assert rtt_summary([1.0]) == "no ping replies"
