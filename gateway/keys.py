"""WireGuard keys: generation, derivation and the base64 text form `wg` uses.

Byte-for-byte compatible with `wg genkey`, `wg genpsk` and `wg pubkey`: keys are 32 bytes,
written as 44 characters of standard base64; private keys are clamped X25519 scalars.
"""

from __future__ import annotations

import base64
import binascii
import os
import stat
from pathlib import Path

import nacl.public
import nacl.utils

from gateway.wireguard.constants import KEY_SIZE
from gateway.wireguard.crypto import clamp

KEY_BASE64_LEN = 44
# A key file holds one line; anything much longer is not a key file.
MAX_KEY_FILE_BYTES = 1024


class KeyFormatError(ValueError):
    """Text that is not the base64 form of a 32-byte key; the message says what is wrong."""


class KeyFileError(ValueError):
    """A key file that is missing, unreadable, too open or holds no valid key."""


class KeyFileMissingError(KeyFileError):
    """The key file does not exist."""


def clamp_private_key(raw: bytes) -> bytes:
    """Clamp 32 random bytes into an X25519 private key, as `wg genkey` does."""
    if len(raw) != KEY_SIZE:
        raise KeyFormatError(f"a private key is {KEY_SIZE} bytes, got {len(raw)}")
    return clamp(raw)


def generate_private_key() -> bytes:
    """A new clamped X25519 private key (`wg genkey`)."""
    return clamp_private_key(nacl.utils.random(KEY_SIZE))


def generate_preshared_key() -> bytes:
    """A new random 32-byte preshared key (`wg genpsk`)."""
    return nacl.utils.random(KEY_SIZE)


def public_key(private_key: bytes) -> bytes:
    """The X25519 public key for a private key (`wg pubkey`); the scalar is clamped first."""
    if len(private_key) != KEY_SIZE:
        raise KeyFormatError(f"a private key is {KEY_SIZE} bytes, got {len(private_key)}")
    return nacl.public.PrivateKey(private_key).public_key.encode()


def encode_key(key: bytes) -> str:
    """The 44-character base64 text of a 32-byte key."""
    if len(key) != KEY_SIZE:
        raise KeyFormatError(f"a key is {KEY_SIZE} bytes, got {len(key)}")
    return base64.b64encode(key).decode("ascii")


def decode_key(text: str) -> bytes:
    """Strictly decode the base64 text of a 32-byte key, as `wg` accepts it.

    Surrounding whitespace is ignored; anything else that is not exactly 44 characters of
    canonical standard base64 raises KeyFormatError naming the problem.
    """
    text = text.strip()
    if not text:
        raise KeyFormatError("key is empty")
    if len(text) != KEY_BASE64_LEN:
        raise KeyFormatError(
            f"key must be {KEY_BASE64_LEN} base64 characters ({KEY_SIZE} bytes), "
            f"got {len(text)} characters"
        )
    try:
        key = base64.b64decode(text.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error):
        raise KeyFormatError("key is not valid base64") from None
    if len(key) != KEY_SIZE:
        raise KeyFormatError(f"key decodes to {len(key)} bytes, expected {KEY_SIZE}")
    if base64.b64encode(key).decode("ascii") != text:
        # Unused low bits in the last character are set: `wg` refuses these too.
        raise KeyFormatError("key is not canonical base64 (unused trailing bits are set)")
    return key


def read_key_file(path: Path) -> bytes:
    """Read a key from a file that only its owner may access (mode 0600 or stricter).

    Its owner is not checked: root's `show` and `check-config` read the key of the service's
    user, and a key of a third user with mode 0600 is unreadable for anyone else but root.
    """
    try:
        with path.open("rb") as handle:
            mode = os.fstat(handle.fileno()).st_mode
            data = handle.read(MAX_KEY_FILE_BYTES + 1)
    except FileNotFoundError:
        raise KeyFileMissingError(f"key file {path} does not exist") from None
    except PermissionError:
        raise KeyFileError(
            f"cannot read key file {path} as uid {os.geteuid()}: the user firezone-gw runs as"
            f" must own it (chown it to that user, mode 0600)"
        ) from None
    except OSError as exc:
        raise KeyFileError(f"cannot read key file {path}: {exc.strerror}") from None
    if not stat.S_ISREG(mode):
        raise KeyFileError(f"key file {path} is not a regular file")
    if mode & 0o077:
        raise KeyFileError(
            f"key file {path} is accessible by group or others "
            f"(mode {stat.S_IMODE(mode):04o}); fix it with: chmod 600 {path}"
        )
    if len(data) > MAX_KEY_FILE_BYTES:
        raise KeyFileError(f"key file {path} is larger than {MAX_KEY_FILE_BYTES} bytes")
    try:
        return decode_key(data.decode("ascii"))
    except UnicodeDecodeError:
        raise KeyFileError(f"key file {path}: key is not valid base64") from None
    except KeyFormatError as exc:
        raise KeyFileError(f"key file {path}: {exc}") from None


def ensure_private_key_file(path: Path) -> bytes:
    """Return the private key in `path`, first creating it (mode 0600) if it does not exist.

    The new key is written to a temporary file in the same folder and hard-linked into
    place, so a reader never sees a partial file and a key another process created at the
    same moment is never overwritten.
    """
    if os.path.lexists(path):
        return read_key_file(path)
    key = generate_private_key()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(encode_key(key) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return read_key_file(path)
    finally:
        tmp.unlink(missing_ok=True)
    return key
