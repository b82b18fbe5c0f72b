"""Known answers for the primitives: wireguard-go kdf_test.go vectors, Ci/Hi, TAI64N, DH."""

from __future__ import annotations

import pytest

from gateway.wireguard import crypto
from gateway.wireguard.constants import INITIAL_CHAIN_KEY, INITIAL_HASH

KDF_VECTORS = [
    (b"test-key", b"test-input",
     "6f0e5ad38daba1bea8a0d213688736f19763239305e0f58aba697f9ffc41c633",
     "df1194df20802a4fe594cde27e92991c8cae66c366e8106aaa937a55fa371e8a",
     "fac6e2745a325f5dc5d11a5b165aad08b0ada28e7b4e666b7c077934a4d76c24"),
    (b"wireguard", b"wireguard",
     "491d43bbfdaa8750aaf535e334ecbfe5129967cd64635101c566d4caefda96e8",
     "1e71a379baefd8a79aa4662212fcafe19a23e2b609a3db7d6bcba8f560e3d25f",
     "31e1ae48bddfbe5de38f295e5452b1909a1b4e38e183926af3780b0c1e1f0160"),
    (b"", b"",
     "8387b46bf43eccfcf349552a095d8315c4055beb90208fb1be23b894bc2ed5d0",
     "58a0e5f6faefccf4807bff1f05fa8a9217945762040bcec2f4b4a62bdfe0e86e",
     "0ce6ea98ec548f8e281e93e32db65621c45eb18dc6f0a7ad94178610a2f7338e"),
]  # fmt: skip


@pytest.mark.parametrize(("key", "data", "t0", "t1", "t2"), KDF_VECTORS)
def test_kdf_vectors(key: bytes, data: bytes, t0: str, t1: str, t2: str) -> None:
    assert crypto.kdf1(key, data).hex() == t0
    assert [x.hex() for x in crypto.kdf2(key, data)] == [t0, t1]
    assert [x.hex() for x in crypto.kdf3(key, data)] == [t0, t1, t2]


def test_initial_chain_key_and_hash() -> None:
    assert INITIAL_CHAIN_KEY.hex() == (
        "60e26daef327efc02ec335e2a025d2d016eb4206f87277f52d38d1988b78cd36"
    )
    assert INITIAL_HASH.hex() == "2211b361081ac566691243db458ad5322d9c6c662293e8b70ee19c65ba079ef3"


def test_tai64n_layout_whitening_and_order() -> None:
    stamp = crypto.tai64n(1_700_000_000.123456789)
    assert len(stamp) == 12
    assert int.from_bytes(stamp[:8], "big") == 0x400000000000000A + 1_700_000_000
    assert int.from_bytes(stamp[8:], "big") & 0xFFFFFF == 0
    assert crypto.tai64n(1_700_000_001.0) > stamp
    assert crypto.tai64n(1_700_000_000.2) > stamp


def test_dh_agrees_and_rejects_low_order_points() -> None:
    a, b = bytes(range(32)), bytes(range(1, 33))
    assert crypto.dh(a, crypto.public_key(b)) == crypto.dh(b, crypto.public_key(a))
    for low_order in (bytes(32), (1).to_bytes(32, "little")):
        with pytest.raises(crypto.CryptoFailure):
            crypto.dh(a, low_order)


def test_aead_and_xaead_reject_tampering() -> None:
    key = bytes(32)
    sealed = crypto.aead_encrypt(key, 7, b"payload", b"ad")
    assert crypto.aead_decrypt(key, 7, sealed, b"ad") == b"payload"
    with pytest.raises(crypto.CryptoFailure):
        crypto.aead_decrypt(key, 8, sealed, b"ad")
    nonce = bytes(range(24))
    xsealed = crypto.xaead_encrypt(key, nonce, b"cookie", b"mac1")
    assert crypto.xaead_decrypt(key, nonce, xsealed, b"mac1") == b"cookie"
    with pytest.raises(crypto.CryptoFailure):
        crypto.xaead_decrypt(key, nonce, xsealed, b"mac2")
