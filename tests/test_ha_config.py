"""`[ha]` in the config: accepted as documented, each error names its key and value."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway import keys
from gateway.config import ConfigError, parse_config_text

WG = keys.generate_private_key()
HA = keys.generate_private_key()
OTHER = keys.public_key(keys.generate_private_key())


def _config(tmp_path: Path, **ha: str) -> str:
    (tmp_path / "ha.key").write_text(keys.encode_key(HA) + "\n")
    (tmp_path / "wg.key").write_text(keys.encode_key(WG) + "\n")
    for name in ("ha.key", "wg.key"):
        (tmp_path / name).chmod(0o600)
    table = {
        "listen": "127.0.0.1:51821",
        "peer": "127.0.0.2:51821",
        "secret_key_file": "ha.key",
        "peer_public_key": keys.encode_key(OTHER),
        **ha,
    }
    lines = "".join(f'{k} = "{v}"\n' if k != "rate" else f"{k} = {v}\n" for k, v in table.items())
    return (
        f'[interface]\nname = "fzgw0"\nprivate_key = "{keys.encode_key(WG)}"\n'
        f"addresses = []\n[ha]\n{lines}"
    )


def test_a_valid_table(tmp_path: Path) -> None:
    config = parse_config_text(_config(tmp_path, role="active"), base_dir=tmp_path, source="gw")
    assert config.ha is not None
    assert config.ha.listen == ("127.0.0.1", 51821) and config.ha.role == "active"
    assert config.ha.secret_key == HA and config.ha.peer_public_key == OTHER
    assert "secret_key" not in repr(config.ha)


def test_the_example_documents_every_key() -> None:
    text = Path("config/gateway.toml").read_text()
    for key in ("listen", "peer", "secret_key_file", "peer_public_key", "role", "rate"):
        assert f"# {key} = " in text


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"listen": "192.0.2.99:51821"}, "ha.listen: 192.0.2.99 is not an address of this host"),
        ({"listen": "0.0.0.0:51821"}, "ha.listen: name one address of this host"),
        ({"peer": "peer.example:1"}, "ha.peer: expected an IP address and port"),
        ({"peer": "127.0.0.1:51821"}, "ha.peer: is the same address as ha.listen"),
        ({"secret_key_file": "wg.key"}, "ha.secret_key_file: 'wg.key' holds the WireGuard"),
        ({"secret_key_file": "none.key"}, "ha.secret_key_file:"),
        ({"peer_public_key": "AAAA"}, "ha.peer_public_key:"),
        ({"peer_public_key": keys.encode_key(keys.public_key(HA))}, "own replication key"),
        ({"rate": "5"}, "ha.rate: expected bytes per second in 16384..1073741824, got 5"),
        ({"role": "primary"}, "ha.role: Invalid enum value 'primary'"),
        ({"colour": "red"}, "ha: Object contains unknown field `colour`"),
    ],
)
def test_errors_name_key_and_value(tmp_path: Path, change: dict[str, str], expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config_text(_config(tmp_path, **change), base_dir=tmp_path, source="gw")
    assert any(expected in line for line in caught.value.errors), caught.value.errors
