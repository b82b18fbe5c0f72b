"""The UAPI codec and the in-memory model, without sockets."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import uapi
from gateway.uapi import (
    CloseConnection,
    DeviceState,
    GetRequest,
    PeerChange,
    PeerState,
    RequestFailed,
    SetRequest,
    UapiConnection,
    UapiError,
    format_get,
    parse_set,
)
from gateway.uapi.codec import parse_endpoint
from gateway.wireguard.crypto import clamp
from testbed.uapi_model import UapiModel

K1 = "11" * 32
K2 = "22" * 32
net = ipaddress.ip_network


def _events(conn: UapiConnection) -> list[object]:
    out = []
    while (event := conn.next_event()) is not None:
        out.append(event)
    return out


def test_parse_set_full_request() -> None:
    req = parse_set(
        "\n".join(
            [
                f"private_key={'AB' * 32}",
                "listen_port=51820",
                "fwmark=4294967295",
                "replace_peers=true",
                f"public_key={K1}",
                f"preshared_key={K2}",
                "endpoint=[2001:db8::1]:51820",
                "persistent_keepalive_interval=25",
                "replace_allowed_ips=true",
                "allowed_ip=10.0.0.1/24",
                "allowed_ip=fd00::/64",
                "protocol_version=1",
                f"public_key={K2}",
                "update_only=true",
                "allowed_ip=-10.1.0.0/16",
            ]
        )
    )
    assert req == SetRequest(
        private_key=bytes.fromhex("ab" * 32),
        listen_port=51820,
        fwmark=2**32 - 1,
        replace_peers=True,
        peers=(
            PeerChange(
                public_key=bytes.fromhex(K1),
                preshared_key=bytes.fromhex(K2),
                endpoint=("2001:db8::1", 51820),
                persistent_keepalive_interval=25,
                replace_allowed_ips=True,
                allowed_ips=(net("10.0.0.0/24"), net("fd00::/64")),
            ),
            PeerChange(
                public_key=bytes.fromhex(K2),
                update_only=True,
                removed_allowed_ips=(net("10.1.0.0/16"),),
            ),
        ),
    )


def test_line_order_is_folded() -> None:
    req = parse_set(
        f"public_key={K1}\nallowed_ip=10.0.0.0/8\nreplace_allowed_ips=true\nallowed_ip=10.2.0.0/16\n"
        f"public_key={K2}\nendpoint=1.2.3.4:5\nremove=true\nendpoint=5.6.7.8:9"
    )
    assert req.peers[0].allowed_ips == (net("10.2.0.0/16"),)
    assert req.peers[0].replace_allowed_ips
    assert req.peers[1] == PeerChange(bytes.fromhex(K2), remove=True)


@pytest.mark.parametrize(
    ("body", "errno"),
    [
        ("bogus=1", uapi.ERR_INVALID),
        ("no equals sign", uapi.ERR_PROTOCOL),
        ("private_key=00", uapi.ERR_INVALID),
        (f"private_key={'0g' * 32}", uapi.ERR_INVALID),
        (f"private_key= {'00' * 31}0", uapi.ERR_INVALID),
        ("listen_port=65536", uapi.ERR_INVALID),
        ("listen_port=+5", uapi.ERR_INVALID),
        ("listen_port=5_0", uapi.ERR_INVALID),
        ("listen_port=" + "9" * 5000, uapi.ERR_INVALID),
        ("fwmark=-1", uapi.ERR_INVALID),
        ("replace_peers=false", uapi.ERR_INVALID),
        ("public_key=abc", uapi.ERR_INVALID),
        (f"public_key={K1}\nlisten_port=5", uapi.ERR_INVALID),
        (f"public_key={K1}\nendpoint=1.2.3.4", uapi.ERR_INVALID),
        (f"public_key={K1}\nendpoint=2001:db8::1:5", uapi.ERR_INVALID),
        (f"public_key={K1}\nendpoint=[1.2.3.4]:5", uapi.ERR_INVALID),
        (f"public_key={K1}\nendpoint=host.example:5", uapi.ERR_INVALID),
        (f"public_key={K1}\nallowed_ip=10.0.0.1", uapi.ERR_INVALID),
        (f"public_key={K1}\nallowed_ip=10.0.0.0/33", uapi.ERR_INVALID),
        (f"public_key={K1}\nallowed_ip=fe80::%eth0/64", uapi.ERR_INVALID),
        (f"public_key={K1}\npersistent_keepalive_interval=65536", uapi.ERR_INVALID),
        (f"public_key={K1}\nprotocol_version=2", uapi.ERR_INVALID),
        (f"public_key={K1}\nremove=yes", uapi.ERR_INVALID),
        (f"public_key={K1}\nremove=true\nallowed_ip=bad", uapi.ERR_INVALID),
    ],
)
def test_bad_lines_are_rejected_with_wireguard_go_errno(body: str, errno: int) -> None:
    with pytest.raises(UapiError) as err:
        parse_set(body)
    assert err.value.errno == errno


def test_endpoints_are_numeric_and_canonical() -> None:
    assert parse_endpoint("192.0.2.1:51820") == ("192.0.2.1", 51820)
    assert parse_endpoint("[2001:DB8::1]:0") == ("2001:db8::1", 0)


@pytest.mark.parametrize(
    "value",
    # `wg` resolves names before it sends; a scope id could not be framed for the UDP process
    # (issue #11: both used to reach the crypto process and crash it).
    ["localhost:51820", "[fe80::1%eth0]:7", "[fe80::1%1]:7", "192.0.2.1", "[192.0.2.1]:1"],
)
def test_names_and_scoped_endpoints_are_invalid(value: str) -> None:
    with pytest.raises(UapiError) as err:
        parse_set(f"public_key={K1}\nendpoint={value}")
    assert err.value.errno == uapi.ERR_INVALID


SECRET_HEX = "ab" * 31 + "zz"  # a key with one typo: 64 characters, not all hex


@pytest.mark.parametrize(
    "body",
    [
        f"private_key={SECRET_HEX}",
        f"private_key={SECRET_HEX[:-2]}",
        f"public_key={K1}\npreshared_key={SECRET_HEX}",
        f"private_key{SECRET_HEX}",  # no '=': the whole line is the key material
    ],
)
def test_errors_never_quote_key_values(body: str) -> None:
    with pytest.raises(UapiError) as err:
        parse_set(body)
    assert SECRET_HEX[:16] not in str(err.value)


def test_format_get_order_and_omissions() -> None:
    state = DeviceState(
        private_key=bytes(range(32)),
        listen_port=51820,
        fwmark=0,
        peers=[
            PeerState(
                public_key=bytes.fromhex(K1),
                endpoint=("192.0.2.1", 1),
                last_handshake_ns=1_700_000_000_123_456_789,
                tx_bytes=5,
                rx_bytes=6,
                persistent_keepalive_interval=25,
                allowed_ips=[net("10.0.0.0/8"), net("fd00::/8")],
            )
        ],
    )
    assert format_get(state).decode().split("\n") == [
        f"private_key={bytes(range(32)).hex()}",
        "listen_port=51820",
        f"public_key={K1}",
        f"preshared_key={'00' * 32}",
        "protocol_version=1",
        "endpoint=192.0.2.1:1",
        "last_handshake_time_sec=1700000000",
        "last_handshake_time_nsec=123456789",
        "tx_bytes=5",
        "rx_bytes=6",
        "persistent_keepalive_interval=25",
        "allowed_ip=10.0.0.0/8",
        "allowed_ip=fd00::/8",
        "errno=0",
        "",
        "",
    ]
    assert format_get(DeviceState()) == b"errno=0\n\n"


def test_connection_events_byte_by_byte() -> None:
    conn = UapiConnection()
    data = f"get=1\n\nset=1\npublic_key={K1}\nallowed_ip=10.0.0.0/8\n\nget=1\n\n".encode()
    events: list[object] = []
    for i in range(len(data)):
        conn.feed(data[i : i + 1])
        events += _events(conn)
    assert events[0] == GetRequest()
    assert isinstance(events[1], SetRequest)
    assert events[1].peers[0].allowed_ips == (net("10.0.0.0/8"),)
    assert events[2] == GetRequest()
    assert len(events) == 3


def test_connection_failed_set_skips_to_blank_line_then_continues() -> None:
    conn = UapiConnection()
    conn.feed(b"set=1\nlisten_port=x\nprivate_key=zz\n\nget=1\n\n")
    assert _events(conn) == [
        RequestFailed(uapi.ERR_INVALID, "listen_port: expected an integer below 2^16, got 'x'"),
        GetRequest(),
    ]


def test_connection_protocol_errors() -> None:
    conn = UapiConnection()
    conn.feed(b"get=1\nx\n")
    assert _events(conn) == [RequestFailed(uapi.ERR_INVALID, "trailing characters after get=1")]
    conn.feed(b"nonsense=1\n")
    assert isinstance(conn.next_event(), CloseConnection)
    assert conn.closed
    assert not conn.wants_input


def test_connection_limits() -> None:
    conn = UapiConnection(max_line_bytes=100)
    conn.feed(b"set=1\n" + b"a" * 200)
    assert _events(conn) == [RequestFailed(uapi.ERR_IO, "line too long")]
    assert conn.closed
    conn = UapiConnection(max_request_bytes=1000)
    conn.feed(b"set=1\n" + f"public_key={K1}\n".encode() + b"allowed_ip=10.0.0.0/8\n" * 100)
    assert _events(conn) == [RequestFailed(uapi.ERR_IO, "set request too large")]


def test_connection_eof_applies_partial_set_like_wireguard_go() -> None:
    conn = UapiConnection()
    conn.feed(b"set=1\nlisten_port=7\n")
    conn.feed_eof()
    events = _events(conn)
    assert events == [SetRequest(listen_port=7)]
    conn = UapiConnection()
    conn.feed(b"get=1\n")
    conn.feed_eof()
    assert isinstance(conn.next_event(), CloseConnection)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=20))
def test_arbitrary_bytes_never_raise(chunks: list[bytes]) -> None:
    conn = UapiConnection(max_line_bytes=128)
    for chunk in chunks:
        conn.feed(chunk)
        _events(conn)
    conn.feed_eof()
    _events(conn)
    assert conn.closed


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [
                "set=1",
                "get=1",
                "",
                f"public_key={K1}",
                f"public_key={K2}",
                "allowed_ip=10.0.0.0/8",
                "allowed_ip=-10.0.0.0/8",
                "replace_allowed_ips=true",
                "remove=true",
                "update_only=true",
                "listen_port=1",
                "endpoint=[::1]:1",
                "junk",
            ]
        ),
        max_size=30,
    )
)
def test_arbitrary_line_sequences_never_raise(lines: list[str]) -> None:
    conn = UapiConnection()
    model = UapiModel()
    conn.feed(("\n".join(lines) + "\n").encode())
    for event in _events(conn):
        if isinstance(event, SetRequest):
            assert model.apply(event) == 0
        if isinstance(event, GetRequest):
            assert format_get(model.get_snapshot()).endswith(b"errno=0\n\n")


def test_model_semantics() -> None:
    model = UapiModel()
    own_private = bytes(range(1, 33))
    assert (
        model.apply(
            parse_set(
                f"private_key={own_private.hex()}\nlisten_port=51820\n"
                f"public_key={K1}\nallowed_ip=10.0.0.0/8\nallowed_ip=10.1.0.0/16\n"
                f"public_key={K2}\nallowed_ip=10.1.0.0/16\n"  # moves from K1 to K2
                f"public_key={'33' * 32}\nupdate_only=true\nallowed_ip=10.9.0.0/16\n"
            )
        )
        == 0
    )
    assert model.private_key == clamp(own_private)
    snap = model.get_snapshot()
    assert [(p.public_key.hex(), list(p.allowed_ips)) for p in snap.peers] == [
        (K1, [net("10.0.0.0/8")]),
        (K2, [net("10.1.0.0/16")]),
    ]
    # a peer with our own public key is ignored
    assert model.public_key is not None
    model.apply(parse_set(f"public_key={model.public_key.hex()}\nallowed_ip=10.5.0.0/16"))
    assert len(model.get_snapshot().peers) == 2
    model.apply(
        parse_set(f"public_key={K1}\nremove=true\npublic_key={K2}\nallowed_ip=-10.1.0.0/16")
    )
    snap = model.get_snapshot()
    assert [(p.public_key.hex(), list(p.allowed_ips)) for p in snap.peers] == [(K2, [])]
    # K1's prefixes are free again
    model.apply(parse_set(f"public_key={K2}\nallowed_ip=10.0.0.0/8"))
    model.apply(parse_set(f"replace_peers=true\npublic_key={K1}\nallowed_ip=10.0.0.0/8"))
    snap = model.get_snapshot()
    assert [(p.public_key.hex(), list(p.allowed_ips)) for p in snap.peers] == [
        (K1, [net("10.0.0.0/8")])
    ]
    model.apply(parse_set(f"private_key={'00' * 32}"))
    assert model.get_snapshot().private_key is None
