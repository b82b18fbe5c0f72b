"""The runtime directory and the stats segment in it refuse what another user could plant:
links, fifos, files of another owner, group/world-writable directories, forged headers."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.telemetry import runtime_dir
from gateway.telemetry.show import find_stats_segment, remove_dead_segments, stats_segment_name
from gateway.telemetry.stats import MAGIC, VERSION, StatsRegion
from testbed.gateways import firezone_executable
from testbed.wgpeer import wg_genkey

NOBODY = 65534


@pytest.fixture
def rundir(tmp_path: Path) -> Path:
    path = tmp_path / "run"
    os.close(runtime_dir.make_dir(path))
    return path


def test_make_dir_creates_0700_and_accepts_a_systemd_made_0755_dir(tmp_path: Path) -> None:
    made = tmp_path / "made"
    os.close(runtime_dir.make_dir(made))
    assert made.stat().st_mode & 0o777 == 0o700
    systemd = tmp_path / "systemd"
    systemd.mkdir(mode=0o755)
    os.close(runtime_dir.make_dir(systemd))


@pytest.mark.parametrize("problem", ["world-writable", "group-writable", "other owner", "link"])
def test_unsafe_directories_are_refused(tmp_path: Path, problem: str) -> None:
    path = tmp_path / "run"
    if problem == "link":
        (tmp_path / "elsewhere").mkdir(mode=0o700)
        path.symlink_to(tmp_path / "elsewhere")
    else:
        path.mkdir(mode=0o700)
        if problem == "other owner":
            os.chown(path, NOBODY, NOBODY)
        else:
            path.chmod(0o1777 if problem == "world-writable" else 0o770)
    with pytest.raises(OSError, match=None if problem == "link" else str(path)):
        os.close(runtime_dir.make_dir(path))
    with pytest.raises(OSError):
        StatsRegion.create("s", workers=1, directory=path)


def test_a_fifo_a_link_and_a_foreign_file_are_refused_without_blocking(rundir: Path) -> None:
    real = StatsRegion.create("real", workers=1, max_peers=4, directory=rundir)
    try:
        os.mkfifo(rundir / "fifo", 0o600)
        (rundir / "link").symlink_to(rundir / "real")
        (rundir / "foreign").write_bytes((rundir / "real").read_bytes())
        os.chown(rundir / "foreign", NOBODY, NOBODY)
        code = (
            "import sys; from pathlib import Path\n"
            "from gateway.telemetry.stats import StatsRegion\n"
            "for name in ('fifo', 'link', 'foreign'):\n"
            "    try:\n"
            "        StatsRegion.attach(name, directory=Path(sys.argv[1]))\n"
            "    except OSError as exc:\n"
            "        print(name, exc)\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", code, str(rundir)],
            capture_output=True,
            text=True,
            timeout=30,  # a blocking open of the fifo would hang here
            check=True,
        ).stdout.splitlines()
        assert out[0] == "fifo fifo is not a regular file"
        assert out[1].startswith("link ")  # ELOOP from O_NOFOLLOW
        assert out[2] == f"foreign foreign is owned by uid {NOBODY}, not by uid 0"
        again = StatsRegion.attach("real", directory=rundir)
        again.close()
    finally:
        real.close()
        real.unlink()


def _forge(path: Path, workers: int, max_peers: int, size: int, magic: int = MAGIC) -> None:
    header = struct.pack("=5Q", magic, VERSION, workers, max_peers, 2**63)
    path.write_bytes(header + bytes(max(0, size - len(header))))
    path.chmod(0o600)


@pytest.mark.parametrize(
    ("workers", "max_peers", "size", "error"),
    [
        (1, 4, 100, "too small"),
        (1, 4, StatsRegion.size_for(1, 4, dns=False) + 8, "header describes"),
        (1, 4, StatsRegion.size_for(1, 4, dns=False) - 8, "header describes"),
        (2**40, 4, 4096, "workers in the header"),
        (1, 2**40, 4096, "peers in the header"),
    ],
)
def test_forged_segments_are_refused_naming_the_field(
    rundir: Path, workers: int, max_peers: int, size: int, error: str
) -> None:
    _forge(rundir / "forged", workers, max_peers, size)
    with pytest.raises(ValueError, match=error):
        StatsRegion.attach("forged", directory=rundir)


def test_show_skips_forged_and_planted_segments(rundir: Path) -> None:
    interface = f"fzo2r{os.getpid() % 10000}"
    # Claims to be the newest segment of a live supervisor (pid 1), but its sizes are wrong.
    _forge(rundir / stats_segment_name(interface, 1), 1, 4, 4096)
    os.mkfifo(rundir / stats_segment_name(interface, os.getppid()), 0o600)
    assert find_stats_segment(interface, rundir) is None
    live = StatsRegion.create(
        stats_segment_name(interface, os.getpid()), workers=1, directory=rundir
    )
    try:
        assert find_stats_segment(interface, rundir) == live.name
    finally:
        live.close()
        live.unlink()


def test_show_refuses_a_directory_others_can_write(rundir: Path) -> None:
    rundir.chmod(0o777)
    with pytest.raises(runtime_dir.UnsafePathError, match="writable by group or others"):
        find_stats_segment("fzo2x", rundir)


def test_a_leftover_of_a_dead_instance_is_replaced(rundir: Path) -> None:
    (rundir / "again").write_bytes(b"left by a crash")
    region = StatsRegion.create("again", workers=1, max_peers=4, directory=rundir)
    try:
        assert region.path.stat().st_size == StatsRegion.size_for(1, 4, dns=False)
        assert region.path.stat().st_mode & 0o777 == 0o600
    finally:
        region.close()
        region.unlink()
    assert not (rundir / "again").exists()


def test_show_names_an_unsafe_runtime_dir_instead_of_reading_it(tmp_path: Path) -> None:
    rundir = tmp_path / "run"
    rundir.mkdir(mode=0o700)
    rundir.chmod(0o777)
    key_file = tmp_path / "private.key"
    key_file.write_text(wg_genkey() + "\n")
    key_file.chmod(0o600)
    config = tmp_path / "gateway.toml"
    config.write_text(f'[interface]\nname = "fzo2u"\nprivate_key_file = "{key_file}"\n')
    proc = subprocess.run(
        [firezone_executable(), "--config", str(config), "show"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={**os.environ, "FIREZONE_GW_RUNTIME_DIR": str(rundir)},
    )
    assert proc.returncode == 1
    assert f"cannot read the counters of fzo2u: {rundir} is writable by group" in proc.stderr


def test_segments_of_dead_supervisors_are_removed_at_start(rundir: Path) -> None:
    interface = f"fzo2d{os.getpid() % 10000}"
    dead = subprocess.Popen(["true"])
    dead.wait()
    crashed = StatsRegion.create(
        stats_segment_name(interface, dead.pid), workers=1, directory=rundir
    )
    crashed.close()
    live = StatsRegion.create(
        stats_segment_name(interface, os.getpid()), workers=1, directory=rundir
    )
    other = StatsRegion.create(
        stats_segment_name(interface + "o", dead.pid), workers=1, directory=rundir
    )
    os.mkfifo(rundir / stats_segment_name(interface, 1), 0o600)
    try:
        removed = remove_dead_segments(interface, rundir)
        assert removed == sorted([crashed.name, stats_segment_name(interface, 1)])
        assert live.path.exists() and other.path.exists()
    finally:
        for region in (live, other):
            region.close()
            region.unlink()
