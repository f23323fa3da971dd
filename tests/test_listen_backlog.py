"""The listening socket's backlog is NOTIFIER_LISTEN_BACKLOG, for one process and for workers sharing the parent's
socket: in a reconnect storm an overflowing queue resets handshakes, and each reset client backs off."""

from __future__ import annotations

import subprocess

import pytest

from tests.processes import StartNotifier, notifier_env
from tests.support import free_port

pytestmark = pytest.mark.rabbitmq


def listen_backlog(port: int) -> int:
    """The backlog of the socket listening on `port`, as the kernel reports it (`ss`: Send-Q of a listener)."""
    output = subprocess.run(
        ["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True, check=True, timeout=10
    ).stdout
    backlogs = {int(line.split()[2]) for line in output.splitlines() if line.strip()}
    assert len(backlogs) == 1, output
    return backlogs.pop()


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_the_listening_socket_has_the_configured_backlog(
    start_notifier: StartNotifier, exchange: str, workers: str
) -> None:
    port = free_port()
    env = notifier_env(port, exchange, NOTIFIER_LISTEN_BACKLOG="777", NOTIFIER_WORKERS=workers)
    await start_notifier("serve", env=env, port=port)
    assert listen_backlog(port) == 777


async def test_the_default_backlog_is_4096(start_notifier: StartNotifier, exchange: str) -> None:
    port = free_port()
    await start_notifier("serve", env=notifier_env(port, exchange), port=port)
    with open("/proc/sys/net/core/somaxconn") as limit:
        somaxconn = int(limit.read())  # the kernel caps what a process asks for
    assert listen_backlog(port) == min(4096, somaxconn)
