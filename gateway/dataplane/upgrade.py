"""SIGUSR2's first step: the installed version checks itself before the supervisor becomes it.

`firezone-gw check-config --import-all` (the config, and an import of every module) in a
child process; the supervisor's loop waits for it on a pidfd and keeps watching its
children meanwhile. Only a check that passed leads to the exec (handover.exec_handover); a
failure, or a check still running after UPGRADE_CHECK_TIMEOUT, leaves the running version.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

UPGRADE_CHECK_TIMEOUT = 20.0  # seconds the new version may take (under the 30 s watchdog)


@dataclass
class UpgradeCheck:
    """One run of the installed version's check (see module docstring)."""

    executable: str
    proc: subprocess.Popen[bytes]
    pidfd: int
    output: BinaryIO
    deadline: float

    @classmethod
    def start(cls, executable: str, config_path: Path) -> UpgradeCheck:
        """OSError if it cannot even start."""
        command = [executable, "--config", str(config_path), "check-config", "--import-all"]
        output = tempfile.TemporaryFile()  # noqa: SIM115 - closed by finish()
        # Ignored, SIGUSR2 stays ignored in the check: `systemctl kill -s USR2` without
        # --kill-who=main signals every process of the unit, and its default would end it.
        previous = signal.signal(signal.SIGUSR2, signal.SIG_IGN)
        try:
            proc = subprocess.Popen(  # noqa: S603 - this gateway's own executable
                command, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT
            )
        except OSError:
            output.close()
            raise
        finally:
            signal.signal(signal.SIGUSR2, signal.SIG_DFL if previous is None else previous)
        deadline = time.monotonic() + UPGRADE_CHECK_TIMEOUT
        return cls(executable, proc, os.pidfd_open(proc.pid), output, deadline)

    def fileno(self) -> int:
        return self.pidfd

    def exited(self) -> bool:
        return self.proc.poll() is not None

    def finish(self) -> str | None:
        """None if the check passed, else what went wrong (a check still running is
        killed: it took too long)."""
        timed_out = self.proc.poll() is None
        if timed_out:
            self.proc.kill()
        code = self.proc.wait()
        os.close(self.pidfd)
        self.output.seek(0)
        tail = " ".join(self.output.read().decode(errors="replace").split()[-60:])
        self.output.close()
        if timed_out:
            return f"{self.executable} did not finish its check in {UPGRADE_CHECK_TIMEOUT:.0f} s"
        if code != 0:
            return f"{self.executable} failed its check (exit status {code}): {tail}"
        return None
