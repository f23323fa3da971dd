"""`notifier serve --workers 2` as an operator runs it: a real process tree, real RabbitMQ, real clients."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from typing import Any

import httpx
import pytest
import websockets

from notifier.runtime.workers import shutdown_bound_s
from notifier.settings import Settings
from tests.processes import SHUTDOWN_TIMEOUT_S, START_TIMEOUT_S, run_cli
from tests.support import API_KEY, SECRET, Client, Publisher, rabbitmqctl_rows, token_for
from tests.support_workers import (
    Service,
    StartService,
    connect_until_every_queue_has_clients,
    expect_each_user_gets_its_event,
    queue_of_topic,
)


async def open_user(service: Service, user: str) -> tuple[websockets.ClientConnection, dict[str, Any]]:
    """Connect and authenticate `user`; its first answer is a welcome, or a close with its code."""
    connection = await websockets.connect(service.ws_url, open_timeout=30)
    try:
        await connection.send(json.dumps({"type": "auth", "token": token_for(user)}))
        return connection, json.loads(await asyncio.wait_for(connection.recv(), 60))
    except websockets.ConnectionClosed as closed:
        return connection, {"type": "closed", "code": closed.rcvd.code if closed.rcvd else None}


@pytest.mark.slow
async def test_a_reconnect_storm_on_two_workers_leaves_no_binding_and_refuses_no_one(
    start_service: StartService,
) -> None:
    service = await start_service("--workers", "2", NOTIFIER_BIND_LINGER_S="1")
    await service.wait_for_queues(2)
    users = [f"storm{n}" for n in range(600)]
    for _round in range(2):  # everyone connects at once; then everyone drops and comes back at once
        opened = await asyncio.gather(*(open_user(service, user) for user in users))
        refused = [answer for _, answer in opened if answer["type"] != "welcome"]
        assert refused == []
        await asyncio.gather(*(connection.close() for connection, _ in opened))

    deadline = time.monotonic() + 30
    while bound := queue_of_topic(service.exchange):
        assert time.monotonic() < deadline, f"{len(bound)} bindings left, e.g. {list(bound.items())[:3]}"
        await asyncio.sleep(0.5)


def test_workers_setting_is_bounded() -> None:
    for bad in (0, 65):
        with pytest.raises(ValueError, match="workers"):
            Settings(_env_file=None, workers=bad)  # type: ignore[call-arg]


def test_more_than_one_worker_needs_rabbitmq() -> None:
    env = {"NOTIFIER_JWT_SECRET": SECRET, "NOTIFIER_AMQP_URL": "memory://", "NOTIFIER_PORT": "0"}
    result = run_cli("serve", "--workers", "2", env=env)
    assert result.returncode == 2
    assert "NOTIFIER_WORKERS > 1 needs RabbitMQ" in result.stderr


async def test_two_workers_are_two_instances_and_drain_on_sigterm(
    start_service: StartService, publisher: Publisher
) -> None:
    service = await start_service("--workers", "2")
    queues = await service.wait_for_queues(2)
    assert len(queues) == 2, queues
    assert len(service.live_worker_pids()) == 2

    opened: list[Client] = []
    try:
        by_user = await connect_until_every_queue_has_clients(service, queues, opened)
        await expect_each_user_gets_its_event(service, publisher, by_user)

        # The publish API of whichever worker answers reaches clients of both, through RabbitMQ.
        async with httpx.AsyncClient(base_url=service.http_url, timeout=5) as http:
            ready = await http.get("/readyz")
            assert ready.status_code == 200, ready.text
            for user in by_user:
                answer = await http.post(
                    "/api/publish",
                    json={"topic": f"user.{user}", "data": "via-http"},
                    headers={"Authorization": f"Bearer {API_KEY}"},
                )
                assert answer.status_code == 202, answer.text
        for user, client in by_user.items():
            assert (await client.expect_event(f"user.{user}"))["data"] == "via-http"

        settings = Settings(_env_file=None, shutdown_timeout_s=SHUTDOWN_TIMEOUT_S)  # type: ignore[call-arg]
        bound = shutdown_bound_s(settings)
        stop_requested = time.monotonic()
        service.process.send_signal(signal.SIGTERM)
        for client in opened:
            await client.expect_close(1012, timeout=bound)
        exit_code = await service.process.wait(bound)
        assert exit_code == 0, service.process.logs()
        assert time.monotonic() - stop_requested < bound
        assert not service.process.group_alive(), f"outlived the supervisor: {service.process.group_members()}"
        stopped = [entry for entry in service.log() if entry["event"] == "worker_stopped"]
        assert sorted(entry["exitcode"] for entry in stopped) == [0, 0]
    finally:
        for client in opened:
            with contextlib.suppress(Exception):
                await client.close()


async def test_a_worker_that_dies_is_replaced_by_a_new_instance(
    start_service: StartService, publisher: Publisher
) -> None:
    service = await start_service("--workers", "2")
    first_queues = await service.wait_for_queues(2)
    killed = service.worker_pids()[0]
    os.kill(killed, signal.SIGKILL)

    replacement_queue = await service.wait_for_queues(1, besides=first_queues)
    assert len(replacement_queue) == 1
    deadline = time.monotonic() + START_TIMEOUT_S
    while len(service.live_worker_pids()) < 2:
        assert time.monotonic() < deadline, service.process.logs()
        await asyncio.sleep(0.1)
    assert killed not in service.live_worker_pids()
    assert any(entry["event"] == "worker_died" and entry["pid"] == killed for entry in service.log())

    # The killed worker's queue lingers, without a consumer, until it expires; two live instances serve.
    consuming = {
        row[0]
        for row in rabbitmqctl_rows("list_queues", "name", "consumers")
        if row[0].startswith(f"{service.exchange}.instance.") and row[1] != "0"
    }
    assert len(consuming) == 2 and replacement_queue < consuming, consuming
    opened: list[Client] = []
    try:
        by_user = await connect_until_every_queue_has_clients(service, consuming, opened, prefix="r")
        await expect_each_user_gets_its_event(service, publisher, by_user)
    finally:
        for client in opened:
            with contextlib.suppress(Exception):
                await client.close()

    service.process.send_signal(signal.SIGTERM)
    bound = shutdown_bound_s(Settings(_env_file=None, shutdown_timeout_s=SHUTDOWN_TIMEOUT_S))  # type: ignore[call-arg]
    code = await service.process.wait(bound)
    assert code == 0, service.process.logs()
    assert not service.process.group_alive(), f"outlived the supervisor: {service.process.group_members()}"


def test_auto_workers_is_one_per_usable_core() -> None:
    from notifier.runtime.workers import usable_cores, worker_count

    cores = usable_cores()
    assert 1 <= cores <= len(os.sched_getaffinity(0))
    assert worker_count(Settings(_env_file=None, workers="auto")) == cores  # type: ignore[call-arg]
    assert worker_count(Settings(_env_file=None, workers="auto", amqp_url="memory://")) == 1  # type: ignore[call-arg]
    assert worker_count(Settings(_env_file=None, workers=3)) == 3  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="workers"):
        Settings(_env_file=None, workers="many")  # type: ignore[call-arg,arg-type]


def test_workers_flag_accepts_auto_and_refuses_words() -> None:
    result = run_cli("serve", "--workers", "many")
    assert result.returncode == 2
    assert '"auto"' in result.stderr
