"""The unit tier: no servers. A test here that opens a network connection or listens on a port
fails at once, naming what it tried, so a server-bound test cannot slip into ``make unit``
(its place is tests/integration/ or tests/system/). Child processes (``python -m ... --help``)
are allowed; they must not start servers either.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest

_NETWORK = (socket.AF_INET, socket.AF_INET6)


class ServerUsed(AssertionError):
    """A unit test reached for the network."""


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # botocore looks for credentials at the EC2 metadata address when none are configured.
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")

    def refuse(name: str) -> Any:
        real = getattr(socket.socket, name)

        def guarded(self: socket.socket, address: Any, *args: Any) -> Any:
            if self.family in _NETWORK:
                raise ServerUsed(f"unit tests use no network: socket.{name}({address!r}); "
                                 "move this test to tests/integration/ or tests/system/")
            return real(self, address, *args)

        return guarded

    for name in ("connect", "connect_ex", "bind"):
        monkeypatch.setattr(socket.socket, name, refuse(name))
    yield
