"""A real WireGuard peer for tests: wireguard-go inside a test namespace, driven by `wg`.

Interoperating with wireguard-go and wireguard-tools from Debian is the proof that our
protocol is right. Interface names are unique to the run (see testbed/netns.py), so the control
socket /var/run/wireguard/<name>.sock is ours and we may remove it if wireguard-go did not.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from testbed.netns import WIREGUARD_RUN_DIR, NetNS, run, unique_name, wait_for

# Debian's package; benchmarks may name a newer build (bench_network --wireguard-go PATH).
DEFAULT_WIREGUARD_GO = "/usr/bin/wireguard-go"


def wireguard_go_binary(path: str | os.PathLike[str] | None = None) -> str:
    """The wireguard-go to run: `path`, or Debian's; ValueError says why it cannot be run."""
    chosen = os.fspath(path) if path else DEFAULT_WIREGUARD_GO
    found = shutil.which(chosen)
    if found is None:
        if not os.path.exists(chosen):
            raise ValueError(f"wireguard-go binary {chosen!r} does not exist")
        raise ValueError(f"wireguard-go binary {chosen!r} is not an executable file")
    return os.path.abspath(found)


def wg_genkey() -> str:
    return run(["wg", "genkey"]).strip()


def wg_pubkey(private_key: str) -> str:
    proc = subprocess.run(
        ["wg", "pubkey"], input=private_key, capture_output=True, text=True, check=True
    )
    return proc.stdout.strip()


@dataclass
class PeerDump:
    public_key: str
    preshared_key: str
    endpoint: str
    allowed_ips: str
    latest_handshake: int
    rx_bytes: int
    tx_bytes: int
    persistent_keepalive: str


class WireGuardGo:
    """One wireguard-go interface in `ns`, with a fresh private key.

    `binary` is the wireguard-go executable (default: Debian's, see wireguard_go_binary).
    """

    def __init__(
        self,
        ns: NetNS,
        *,
        tag: str = "fzwg",
        private_key: str | None = None,
        binary: str | None = None,
    ) -> None:
        self.ns = ns
        self.binary = wireguard_go_binary(binary)
        self.ifname = unique_name(tag)
        self.private_key = private_key or wg_genkey()
        self.public_key = wg_pubkey(self.private_key)
        self._dir = tempfile.TemporaryDirectory(prefix="fzwg-")
        self.log_path = Path(self._dir.name) / "wireguard-go.log"
        self.socket = WIREGUARD_RUN_DIR / f"{self.ifname}.sock"
        if self.socket.exists():
            raise RuntimeError(f"{self.socket} already exists: name clash with another run")
        # For builds that want it where the kernel has no WireGuard module (as here); the
        # Debian and 0.0.20250522 builds do not read it.
        env = dict(os.environ, WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD="1", LOG_LEVEL="debug")
        with self.log_path.open("wb") as log:
            self.proc = ns.popen(
                self.binary, "-f", self.ifname, stdout=log, stderr=subprocess.STDOUT, env=env
            )
        wait_for(lambda: self.socket.exists() or self.proc.poll() is not None, timeout=10)
        if self.proc.poll() is not None:
            raise RuntimeError(f"wireguard-go exited: {self.log()}")
        self.set("private-key", self._secret_file("private.key", self.private_key))

    def _secret_file(self, name: str, content: str) -> str:
        path = Path(self._dir.name) / name
        path.write_text(content + "\n")
        path.chmod(0o600)
        return str(path)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def wg(self, *args: str) -> str:
        return self.ns.run("wg", *args)

    def set(self, *args: str) -> None:
        self.wg("set", self.ifname, *args)

    def listen(self, port: int) -> None:
        self.set("listen-port", str(port))

    def add_peer(
        self,
        public_key: str,
        *,
        allowed_ips: str,
        endpoint: str | None = None,
        preshared_key: str | None = None,
        keepalive: int | None = None,
    ) -> None:
        args = ["peer", public_key, "allowed-ips", allowed_ips]
        if endpoint:
            args += ["endpoint", endpoint]
        if preshared_key:
            # Base64 keys may contain "/": keep the file name a plain name.
            name = public_key[:8].replace("/", "_")
            args += ["preshared-key", self._secret_file(f"{name}.psk", preshared_key)]
        if keepalive:
            args += ["persistent-keepalive", str(keepalive)]
        self.set(*args)

    def up(self, *addresses: str, mtu: int = 1420) -> None:
        for address in addresses:
            extra = ["nodad"] if ":" in address else []
            self.ns.ip("addr", "add", address, "dev", self.ifname, *extra)
        self.ns.ip("link", "set", self.ifname, "mtu", str(mtu), "up")

    def peers(self) -> dict[str, PeerDump]:
        lines = self.wg("show", self.ifname, "dump").splitlines()[1:]
        result = {}
        for line in lines:
            f = line.split("\t")
            result[f[0]] = PeerDump(f[0], f[1], f[2], f[3], int(f[4]), int(f[5]), int(f[6]), f[7])
        return result

    def wait_handshake(self, public_key: str, timeout: float = 10) -> None:
        def done() -> bool:
            peer = self.peers().get(public_key)
            return peer is not None and peer.latest_handshake > 0

        try:
            wait_for(done, timeout=timeout)
        except TimeoutError as exc:
            raise TimeoutError(f"no handshake with {public_key}: {self.log()}") from exc

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        # Our unique name makes this socket ours; wireguard-go removes it on a clean exit.
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()
        self._dir.cleanup()
