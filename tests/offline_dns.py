"""Name resolution for tests that must not send DNS queries off this machine.

`localhost` resolves as the system does (from /etc/hosts); every other name fails as an
unknown name would, without asking the configured name server.
"""

from __future__ import annotations

import socket
from typing import Any

import pytest

_real_getaddrinfo = socket.getaddrinfo


def _local_only(host: Any, *args: Any, **kwargs: Any) -> Any:
    if host == "localhost":
        return _real_getaddrinfo(host, *args, **kwargs)
    raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")


def use_offline_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "getaddrinfo", _local_only)
