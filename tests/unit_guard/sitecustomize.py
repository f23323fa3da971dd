"""Run at start-up by the Python processes a `unit` test starts (tests/conftest.py puts this directory first on
their PYTHONPATH): the child may not use the network either. Each attempt is appended to the file named by
UNIT_TEST_NETWORK_LOG, which the test's report reads, then refused."""

from __future__ import annotations

import os
import socket
from typing import Any

_LOG = os.environ.get("UNIT_TEST_NETWORK_LOG")


def _refuse(what: str) -> Any:
    def guard(*args: Any, **kwargs: Any) -> Any:
        attempt = f"{what}{args[1:] if what != 'getaddrinfo' else args[:2]!r} in child process {os.getpid()}"
        with open(str(_LOG), "a") as log:
            log.write(attempt + "\n")
        raise RuntimeError(f"a unit test's child process tried the network: {attempt}")

    return guard


if _LOG:
    for _method in ("connect", "connect_ex", "bind", "sendto"):
        setattr(socket.socket, _method, _refuse(_method))
    socket.getaddrinfo = _refuse("getaddrinfo")
