"""Client configs as QR codes, for the WireGuard mobile apps (as PiVPN's `-qr` and wg-easy).

segno makes the code: a maintained, dependency-free QR encoder that also writes PNG without
Pillow. Error correction M (15 %) keeps a config with a private key, DNS and routes within a
version a phone reads from a terminal.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TextIO

import segno

TERMINAL_BORDER = 2  # modules of quiet zone around the code in a terminal
PNG_SCALE = 8  # pixels per module
PNG_BORDER = 4  # the standard quiet zone


def _code(text: str) -> segno.QRCode:
    return segno.make_qr(text, error="m", boost_error=False, encoding="utf-8")


def print_terminal(text: str, out: TextIO) -> None:
    """The code in Unicode half blocks, two modules per character cell (as `qrencode -t
    ansiutf8`): light modules are drawn, dark ones left blank, for a dark terminal."""
    _code(text).terminal(out=out, compact=True, border=TERMINAL_BORDER)


def write_png(text: str, path: Path) -> None:
    """A PNG of the code, mode 0600 (a client config holds its private key)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as image:
        _code(text).save(image, kind="png", scale=PNG_SCALE, border=PNG_BORDER)
