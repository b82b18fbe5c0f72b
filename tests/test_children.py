"""Child process set-up right after fork: its name and the fds it keeps."""

from __future__ import annotations

import json
import mmap
import os
import tempfile

from gateway.dataplane.children import keep_only_fds, set_process_name


def in_child(body: object) -> dict[str, object]:
    """Run `body(report_fd)` in a forked child; returns the JSON it wrote to report_fd."""
    assert callable(body)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(read_end)
            body(write_end)
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as report:
        data = report.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    result: dict[str, object] = json.loads(data)
    return result


def test_a_child_names_itself() -> None:
    def body(report: int) -> None:
        set_process_name("fzgw-tun12")
        with open("/proc/self/comm") as comm:
            os.write(report, json.dumps({"comm": comm.read().strip()}).encode())

    assert in_child(body) == {"comm": "fzgw-tun12"}


def test_a_child_keeps_only_the_fds_it_needs_and_those_of_its_mappings() -> None:
    secret = os.memfd_create("secret")  # stands in for the run-state memfd
    needed = os.eventfd(0)
    with tempfile.TemporaryFile() as backing:
        backing.truncate(4096)
        mapping = mmap.mmap(backing.fileno(), 4096)  # mmap keeps its own dup of the fd
        high = os.dup2(needed, 900)  # far above the others: the last range is closed too
        spare = os.dup(secret)
        try:

            def body(report: int) -> None:
                keep_only_fds((0, 1, 2, report, needed))
                mapping[:5] = b"still"  # the mapping works without its fds
                left = {
                    int(fd): os.readlink(f"/proc/self/fd/{fd}")
                    for fd in os.listdir("/proc/self/fd")
                    if os.path.exists(f"/proc/self/fd/{fd}")
                }
                os.write(report, json.dumps({"fds": left}).encode())

            result = in_child(body)
        finally:
            mapping.close()
            for fd in (high, spare):
                os.close(fd)
    os.close(secret)
    os.close(needed)
    left = result["fds"]
    assert isinstance(left, dict)
    targets = " ".join(left.values())
    assert str(needed) in left and "eventfd" in left[str(needed)]
    assert "memfd:secret" not in targets
    assert str(high) not in left
    assert {"0", "1", "2"} <= left.keys()
