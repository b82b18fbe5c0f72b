import errno

from testbed.netns import run, unique_name
from tunio.device_state import device_gone_error, interface_up, queue_device_name
from tunio.linux import open_multiqueue


def test_device_gone_is_recognised_through_wrapping_exceptions() -> None:
    gone = OSError(errno.EBADFD, "File descriptor in bad state")
    try:
        raise RuntimeError("read failed") from gone
    except RuntimeError as wrapped:
        assert device_gone_error(wrapped)
    assert not device_gone_error(OSError(errno.EAGAIN, "try again"))
    assert not device_gone_error(ValueError("unrelated"))


def test_queue_fd_names_its_device_until_it_is_deleted() -> None:
    name = unique_name("fzds")
    queues = open_multiqueue(name, 1)
    try:
        assert queue_device_name(queues[0].fileno()) == name
        assert interface_up(name) is False  # created down
        assert interface_up(unique_name("fzno")) is None
        run(["ip", "link", "del", name])
        assert queue_device_name(queues[0].fileno()) is None  # the fd outlives its device
    finally:
        for q in queues:
            q.close()
