from __future__ import annotations

import base64
import os
import re
import subprocess
from pathlib import Path

import pytest

from gateway import keys

# RFC 7748 section 6.1 (Alice).
RFC7748_PRIVATE = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
RFC7748_PUBLIC = bytes.fromhex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")


def wg_pubkey(private_b64: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["wg", "pubkey"], input=private_b64 + "\n", capture_output=True, text=True, check=False
    )


def test_generated_private_keys_are_clamped_and_distinct() -> None:
    generated = {keys.generate_private_key() for _ in range(64)}
    assert len(generated) == 64
    for key in generated:
        assert len(key) == keys.KEY_SIZE
        assert key[0] & 0b111 == 0
        assert key[31] & 0x80 == 0
        assert key[31] & 0x40 == 0x40


def test_clamp_matches_rfc7748() -> None:
    raw = bytes(range(32))
    clamped = keys.clamp_private_key(raw)
    assert clamped[0] == raw[0] & 248
    assert clamped[31] == (raw[31] & 127) | 64
    assert clamped[1:31] == raw[1:31]


def test_preshared_keys_are_random_32_bytes() -> None:
    generated = {keys.generate_preshared_key() for _ in range(64)}
    assert len(generated) == 64
    assert all(len(k) == keys.KEY_SIZE for k in generated)


def test_public_key_rfc7748_vector() -> None:
    assert keys.public_key(RFC7748_PRIVATE) == RFC7748_PUBLIC


def test_public_key_matches_wg_pubkey_on_random_keys() -> None:
    # Unclamped random bytes too: `wg pubkey` clamps before multiplying, and so must we.
    for private in [os.urandom(32) for _ in range(16)] + [keys.generate_private_key()]:
        text = keys.encode_key(private)
        result = wg_pubkey(text)
        assert result.returncode == 0, result.stderr
        assert keys.encode_key(keys.public_key(private)) == result.stdout.strip()


def test_encode_decode_round_trip() -> None:
    key = os.urandom(32)
    text = keys.encode_key(key)
    assert len(text) == keys.KEY_BASE64_LEN
    assert text == base64.b64encode(key).decode()
    assert keys.decode_key(text) == key
    assert keys.decode_key(f"  {text}\n") == key


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "key is empty"),
        ("   \n", "key is empty"),
        ("abc", "must be 44 base64 characters (32 bytes), got 3 characters"),
        (base64.b64encode(bytes(33)).decode() + "AAAA", "got 48 characters"),
        ("!" * 43 + "=", "not valid base64"),
        ("é" * 43 + "=", "not valid base64"),
        (base64.b64encode(bytes(31)).decode(), "decodes to 31 bytes, expected 32"),
        (base64.b64encode(bytes(33)).decode(), "decodes to 33 bytes, expected 32"),
        ("A" * 42 + "B=", "not canonical base64"),
    ],
    ids=["empty", "blank", "short", "long", "bad-chars", "non-ascii", "31-bytes", "33-bytes",
         "non-canonical"],
)  # fmt: skip
def test_decode_key_rejects(text: str, message: str) -> None:
    with pytest.raises(keys.KeyFormatError, match=re.escape(message)):
        keys.decode_key(text)


def test_decode_key_rejects_what_wg_rejects() -> None:
    # A non-canonical final character is refused by `wg` as well; we agree with it.
    text = "A" * 42 + "B="
    assert wg_pubkey(text).returncode != 0
    with pytest.raises(keys.KeyFormatError):
        keys.decode_key(text)


def write_key_file(path: Path, content: str, mode: int = 0o600) -> Path:
    path.write_text(content)
    path.chmod(mode)
    return path


def test_read_key_file(tmp_path: Path) -> None:
    key = keys.generate_private_key()
    path = write_key_file(tmp_path / "k", keys.encode_key(key) + "\n", 0o400)
    assert keys.read_key_file(path) == key


def test_read_key_file_missing(tmp_path: Path) -> None:
    with pytest.raises(keys.KeyFileMissingError, match=r"key file .*/nope does not exist"):
        keys.read_key_file(tmp_path / "nope")


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o602])
def test_read_key_file_refuses_group_or_other_access(tmp_path: Path, mode: int) -> None:
    path = write_key_file(tmp_path / "k", keys.encode_key(bytes(32)), mode)
    with pytest.raises(keys.KeyFileError, match=f"chmod 600 {path}") as info:
        keys.read_key_file(path)
    assert f"mode {mode:04o}" in str(info.value)


OTHER_UID = 64_723  # no account has it


def test_unreadable_key_file_says_whose_it_must_be(tmp_path: Path) -> None:
    """What the systemd unit's user sees for a key still owned by root."""
    path = write_key_file(tmp_path / "k", keys.encode_key(bytes(32)) + "\n", 0o600)
    tmp_path.chmod(0o755)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child drops to another uid, reads, reports and exits at once
        try:
            os.close(read_end)
            os.setgroups([])
            os.setresgid(OTHER_UID, OTHER_UID, OTHER_UID)
            os.setresuid(OTHER_UID, OTHER_UID, OTHER_UID)
            try:
                keys.read_key_file(path)
                message = "read it"
            except keys.KeyFileError as exc:
                message = str(exc)
            os.write(write_end, message.encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        message = pipe.read().decode()
    os.waitpid(pid, 0)
    assert message.startswith(f"cannot read key file {path} as uid {OTHER_UID}: "), message
    assert "must own it (chown" in message


def test_read_key_file_bad_content(tmp_path: Path) -> None:
    path = write_key_file(tmp_path / "k", "not a key\n")
    with pytest.raises(keys.KeyFileError, match=f"key file {path}: key must be 44"):
        keys.read_key_file(path)


def test_read_key_file_binary_content(tmp_path: Path) -> None:
    path = tmp_path / "k"
    path.write_bytes(b"\xff" * 44)
    path.chmod(0o600)
    with pytest.raises(keys.KeyFileError, match="not valid base64"):
        keys.read_key_file(path)


def test_read_key_file_too_large(tmp_path: Path) -> None:
    path = write_key_file(tmp_path / "k", "A" * (keys.MAX_KEY_FILE_BYTES + 1))
    with pytest.raises(keys.KeyFileError, match="larger than 1024 bytes"):
        keys.read_key_file(path)


def test_read_key_file_directory(tmp_path: Path) -> None:
    directory = tmp_path / "d"
    directory.mkdir(mode=0o700)
    with pytest.raises(keys.KeyFileError, match=r"cannot read key file .*/d: Is a directory"):
        keys.read_key_file(directory)


def test_ensure_private_key_file_creates_0600(tmp_path: Path) -> None:
    path = tmp_path / "private.key"
    old_umask = os.umask(0)  # the file must be 0600 whatever the umask
    try:
        key = keys.ensure_private_key_file(path)
    finally:
        os.umask(old_umask)
    assert path.stat().st_mode & 0o777 == 0o600
    assert keys.clamp_private_key(key) == key
    assert keys.read_key_file(path) == key
    assert [p.name for p in tmp_path.iterdir()] == ["private.key"]  # no temporary file left
    result = wg_pubkey(path.read_text().strip())
    assert result.stdout.strip() == keys.encode_key(keys.public_key(key))


def test_ensure_private_key_file_keeps_existing_key(tmp_path: Path) -> None:
    existing = keys.generate_private_key()
    path = write_key_file(tmp_path / "private.key", keys.encode_key(existing) + "\n")
    assert keys.ensure_private_key_file(path) == existing
    assert keys.ensure_private_key_file(path) == existing
    assert path.read_text() == keys.encode_key(existing) + "\n"


def test_ensure_private_key_file_checks_existing_mode(tmp_path: Path) -> None:
    path = write_key_file(tmp_path / "private.key", keys.encode_key(bytes(32)), 0o644)
    with pytest.raises(keys.KeyFileError, match="chmod 600"):
        keys.ensure_private_key_file(path)
