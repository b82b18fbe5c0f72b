from __future__ import annotations

from collections.abc import Iterator

import pytest

from testbed.netns import Hosts, hosts


@pytest.fixture
def netns_hosts() -> Iterator[Hosts]:
    """Network namespaces for one test, all removed afterwards even when the test fails."""
    with hosts() as factory:
        yield factory
