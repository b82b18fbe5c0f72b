"""`client-config --qr` and `--qr-png`: what a phone's scanner reads is the text config.

An independent decoder (zbarimg, Debian's zbar-tools) reads the PNG, and the terminal code
turned back into pixels, and both must give exactly what `client-config` prints as text."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from gateway.keys import encode_key, generate_private_key, public_key
from tests.test_client_config import _cli

# Half blocks: (upper, lower) module of a character cell; drawn = light (a dark terminal).
HALF_BLOCKS = {"█": (1, 1), "▀": (1, 0), "▄": (0, 1), " ": (0, 0)}
PIXELS_PER_MODULE = 4


@pytest.fixture
def config(tmp_path: Path) -> tuple[Path, str]:
    """A gateway config with one peer; returns it and the peer's public key."""
    key = tmp_path / "private.key"
    key.write_text(encode_key(generate_private_key()) + "\n")
    key.chmod(0o600)
    peer = encode_key(public_key(generate_private_key()))
    path = tmp_path / "gateway.toml"
    path.write_text(
        '[interface]\nname = "fzqr0"\nprivate_key_file = "private.key"\n'
        'listen_port = 51820\naddresses = ["100.90.0.1/24"]\n'
        '[metrics]\nlisten = "127.0.0.1:9586"\n'
        f'[[peers]]\npublic_key = "{peer}"\nallowed_ips = ["100.90.0.7/32"]\n'
    )
    return path, peer


def client_config(config: tuple[Path, str], *extra: str) -> str:
    path, peer = config
    route = ("--route", "10.20.0.0/16")
    endpoint = ("--endpoint", "gw.example.test:51820")
    proc = _cli("client-config", "--peer", peer, *endpoint, *route, *extra, config=path)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def decode(image: Path) -> str:
    proc = subprocess.run(
        ["zbarimg", "--quiet", "--raw", str(image)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.removesuffix("\n")  # zbarimg ends each symbol with a newline


def terminal_to_pgm(text: str, path: Path) -> None:
    """The terminal's half-block code as a greyscale image (light modules white)."""
    rows: list[list[int]] = []
    for line in text.splitlines():
        cells = [HALF_BLOCKS[c] for c in line]
        rows += [[upper for upper, _ in cells], [lower for _, lower in cells]]
    scale = PIXELS_PER_MODULE
    width, height = len(rows[0]) * scale, len(rows) * scale
    body = bytearray()
    for row in rows:
        line = bytes(255 if module else 0 for module in row for _ in range(scale))
        body += line * scale
    path.write_bytes(f"P5 {width} {height} 255\n".encode() + body)


def test_the_png_decodes_to_the_text_config(config: tuple[Path, str], tmp_path: Path) -> None:
    text = client_config(config)
    assert text.startswith("[Interface]\n")
    png = tmp_path / "client.png"
    assert client_config(config, "--qr-png", str(png)) == text  # the text is printed as well
    assert png.stat().st_mode & 0o777 == 0o600  # it holds the client's key
    assert decode(png) == text


def test_the_terminal_code_decodes_to_the_text_config(
    config: tuple[Path, str], tmp_path: Path
) -> None:
    text = client_config(config)
    shown = client_config(config, "--qr")
    assert "[Interface]" not in shown  # only the code
    assert set(shown) <= {*HALF_BLOCKS, "\n"}
    image = tmp_path / "terminal.pgm"
    terminal_to_pgm(shown, image)
    assert decode(image) == text
