"""Shared fixtures (a real RabbitMQ, real uvicorn servers on loopback, real WebSocket clients) and the test tiers.

Tiers are markers derived here, so a test cannot forget its own: one that uses the `rabbitmq` fixture (directly or
through `exchange`, `server`, `publisher`...) is `rabbitmq`; one that uses `browser` is `browser`; one that uses
`npm_tools` is `npm`; a `broker_restart` test is `destructive`; a test with none of these and not marked `loopback`
or `slow` is `unit`, and a unit test that opens a socket fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import aio_pika
import pytest
import websockets
from websockets.typing import Origin

from notifier.instance.node import Node
from tests.faults import CuttableProxy
from tests.npm_tools import NpmTools, find_npm_tools
from tests.processes import NOTIFIER, NotifierProcess, StartNotifier, notifier_env
from tests.support import (
    AMQP_URL,
    Client,
    ConnectClient,
    Publisher,
    RunningServer,
    StartServer,
    free_port,
    make_settings,
    token_for,
)
from tests.support_workers import Service, StartService, delete_queues, instance_queues

# Tiers that keep a test out of `unit`: it needs a service, a program installed, the network, or minutes.
NOT_UNIT = ("rabbitmq", "browser", "nginx", "npm", "cluster", "loopback", "slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Give every test the tier markers its fixtures imply, and `unit` to the tests that need nothing."""
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        if "rabbitmq" in fixtures:
            item.add_marker(pytest.mark.rabbitmq)
        if "browser" in fixtures:
            item.add_marker(pytest.mark.browser)
        if "cluster" in fixtures:
            item.add_marker(pytest.mark.cluster)
        if "npm_tools" in fixtures:
            item.add_marker(pytest.mark.npm)
        if item.get_closest_marker("broker_restart"):
            item.add_marker(pytest.mark.destructive)
        if item.get_closest_marker("destructive") and not item.get_closest_marker("rabbitmq"):
            raise pytest.UsageError(f"{item.nodeid} is destructive but does not use the rabbitmq fixture")
        needs = [name for name in NOT_UNIT if item.get_closest_marker(name)]
        if not needs:
            item.add_marker(pytest.mark.unit)
        elif item.get_closest_marker("unit"):
            raise pytest.UsageError(f"{item.nodeid} is marked unit but needs {', '.join(needs)}")


class NetworkInUnitTest(Exception):
    """A `unit` test tried to use a socket."""


NETWORK_ATTEMPTS = pytest.StashKey[list[str]]()
CHILD_NETWORK_LOG = pytest.StashKey[Path]()
UNIT_GUARD_DIR = Path(__file__).parent / "unit_guard"


@pytest.fixture(autouse=True)
def unit_tests_open_no_sockets(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Refuse connect, bind, sendto and name look-ups in `unit` tests (loopback too): the tier runs anywhere.

    Python processes the test starts with this environment are refused too (unit_guard/sitecustomize.py). Each
    refusal is recorded, so a test whose code caught the error still fails (see pytest_runtest_makereport).
    """
    if request.node.get_closest_marker("unit") is None:
        yield
        return
    attempts = request.node.stash.setdefault(NETWORK_ATTEMPTS, [])
    handle, name = tempfile.mkstemp(prefix="unit-network-", suffix=".log")
    os.close(handle)
    child_log = request.node.stash[CHILD_NETWORK_LOG] = Path(name)
    monkeypatch.setenv("UNIT_TEST_NETWORK_LOG", name)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(UNIT_GUARD_DIR), os.environ.get("PYTHONPATH")])))

    def refuse(what: str) -> Any:
        def guard(*args: Any, **kwargs: Any) -> Any:
            attempt = f"{what}{args[1:] if what != 'getaddrinfo' else args[:2]!r}"
            attempts.append(attempt)
            raise NetworkInUnitTest(
                f"{request.node.nodeid} is a unit test but called socket {attempt}: unit tests use no network, "
                "not even loopback. Use a broker fixture (tier rabbitmq) or mark it @pytest.mark.loopback."
            )

        return guard

    for method in ("connect", "connect_ex", "bind", "sendto"):
        monkeypatch.setattr(socket.socket, method, refuse(method))
    monkeypatch.setattr(socket, "getaddrinfo", refuse("getaddrinfo"))
    yield
    child_log.unlink(missing_ok=True)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A unit test that tried the network fails, even when the code under test swallowed the refusal."""
    outcome = yield
    report: pytest.TestReport = outcome.get_result()  # type: ignore[attr-defined]
    attempts = item.stash.get(NETWORK_ATTEMPTS, [])
    child_log = item.stash.get(CHILD_NETWORK_LOG, None)
    if report.when == "call" and child_log is not None and child_log.exists():
        attempts.extend(child_log.read_text().splitlines())
    if report.when == "call" and report.passed and attempts:
        report.outcome = "failed"
        report.longrepr = f"{item.nodeid} is a unit test but tried the network: {'; '.join(attempts)}"


@pytest.fixture(scope="session")
def rabbitmq() -> str:
    """The real broker. Not reachable is a failure: these tests exist to prove the RabbitMQ path."""

    async def probe() -> None:
        connection = await aio_pika.connect(AMQP_URL, timeout=5)
        await connection.close()

    try:
        asyncio.run(probe())
    except Exception as error:  # noqa: BLE001 - any reason it is unreachable is reported
        pytest.fail(f"RabbitMQ is not reachable at {AMQP_URL}: {error!r} (start it: rabbitmq-server -detached)")
    return AMQP_URL


@pytest.fixture(scope="session")
def npm_tools() -> NpmTools:
    """node, npm, tsc, esbuild and Node 18, 20 and 22, as tests/npm installs them. Missing is a failure."""
    try:
        return find_npm_tools()
    except AssertionError as error:
        pytest.fail(str(error))


@pytest.fixture
async def exchange(rabbitmq: str) -> AsyncIterator[str]:
    """A fresh exchange name per test, so tests never see each other's events; removed afterwards."""
    name = f"test-{uuid.uuid4().hex[:10]}"
    yield name
    connection = await aio_pika.connect(rabbitmq)
    async with connection:
        channel = await connection.channel()
        await channel.exchange_delete(name)
        await channel.exchange_delete(f"{name}.dead")
        await channel.exchange_delete(f"{name}.control")
        await channel.queue_delete(f"{name}.dead")


# Each write path of notifier/connection/senders.py -> the NOTIFIER_WRITE_PATH that gives it under uvicorn.
WRITE_PATH_SETTINGS = {"transport": "auto", "asgi": "asgi"}


@pytest.fixture(params=list(WRITE_PATH_SETTINGS))
def write_path(request: pytest.FixtureRequest) -> str:
    """Run a socket test once over each write path: frames straight to uvicorn's transport (what `notifier
    serve` runs) and plain ASGI sends (what any other ASGI server gets), as uvicorn's own suite runs over each of
    its protocol implementations. Servers the test starts take it, and `connect` checks each client is on it."""
    path: str = request.param
    return path


def write_path_of(request: pytest.FixtureRequest) -> str | None:
    """The write path the test asked for with the `write_path` fixture, if it did."""
    if "write_path" not in request.fixturenames:
        return None
    path: str = request.getfixturevalue("write_path")
    return path


@pytest.fixture
async def start_server(exchange: str, request: pytest.FixtureRequest) -> AsyncIterator[StartServer]:
    """Start real uvicorn servers (our drain-on-shutdown subclass) in this test's event loop."""
    running: list[RunningServer] = []
    path = write_path_of(request)

    async def start(**overrides: Any) -> RunningServer:
        if path is not None:
            overrides.setdefault("write_path", WRITE_PATH_SETTINGS[path])
        overrides.setdefault("exchange", exchange)
        overrides.setdefault("dead_letter_exchange", f"{exchange}.dead")
        overrides.setdefault("port", free_port())
        settings = make_settings(**overrides)
        from notifier.runtime.server import build_server

        server = build_server(settings)
        task = asyncio.create_task(server.serve())
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("server stopped during start-up")
            await asyncio.sleep(0.01)
        node: Node = server.config.app.state.node  # type: ignore[union-attr]
        instance = RunningServer(settings, node, server, task)
        running.append(instance)
        return instance

    yield start
    for instance in running:
        if not instance.task.done():
            await instance.stop()


@pytest.fixture
async def server(start_server: StartServer) -> RunningServer:
    """One instance on RabbitMQ with default settings."""
    return await start_server()


@pytest.fixture
async def connect(request: pytest.FixtureRequest) -> AsyncIterator[ConnectClient]:
    """Open clients; with a `user`, authenticate and check the welcome (and, under the `write_path` fixture,
    that the server writes to this client on that path)."""
    opened: list[Client] = []
    path = write_path_of(request)

    async def open_client(
        running: RunningServer,
        user: str | None = None,
        *,
        topics: list[str] | None = None,
        token: str | None = None,
        origin: str | None = None,
        query: str = "",
    ) -> Client:
        connection = await websockets.connect(
            running.ws_url + query,
            origin=Origin(origin) if origin is not None else None,
            max_size=None,
            open_timeout=5,
        )
        client = Client(connection)
        opened.append(client)
        if user is not None or token is not None:
            await client.send({"type": "auth", "token": token or token_for(user or "", topics)})
            welcome = await client.receive()
            assert welcome["type"] == "welcome", welcome
            if path is not None:
                paths = {session.write_path for session in running.node.sessions_of(welcome["user"])}
                assert paths == {path}, f"{welcome['user']} is written to on {paths}, not on {path}"
        return client

    yield open_client
    for client in opened:
        with contextlib.suppress(Exception):
            await client.close()


@pytest.fixture
async def publisher(rabbitmq: str, exchange: str) -> AsyncIterator[Publisher]:
    connection = await aio_pika.connect(rabbitmq)
    channel = await connection.channel(publisher_confirms=True)
    declared = await channel.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC, durable=True)
    yield Publisher(connection, declared)
    await connection.close()


@pytest.fixture
async def start_notifier(tmp_path: Path) -> AsyncIterator[StartNotifier]:
    """Start processes running notifier (tests/processes.py), their output under the test's tmp_path; each
    is stopped, and its whole process group killed, when the test is over."""
    started: list[NotifierProcess] = []

    async def start(
        *args: str,
        env: Mapping[str, str],
        port: int,
        ready: bool = True,
        command: Sequence[str] = NOTIFIER,
        cwd: Path | None = None,
    ) -> NotifierProcess:
        log_path = tmp_path / f"{args[0] if args else Path(command[0]).name}-{len(started)}.log"
        process = NotifierProcess(args, env, log_path, port, command=command, cwd=cwd)
        started.append(process)
        await process.start(ready=ready)
        return process

    yield start
    for process in started:
        await process.end()


@pytest.fixture
async def start_service(exchange: str, start_notifier: StartNotifier) -> AsyncIterator[StartService]:
    """Start `notifier serve ...` as an operator runs it (JSON logs, often with --workers), without waiting
    for it: tests wait for what they need (its instance queues). Its queues are deleted afterwards."""
    started: list[Service] = []

    async def start(*args: str, **extra_env: str) -> Service:
        port = free_port()
        env = notifier_env(
            port,
            exchange,
            NOTIFIER_LOG_FORMAT="json",
            # Every test client comes from 127.0.0.1: the per-address limits are tested on their own (test_abuse).
            NOTIFIER_MAX_CONNECTIONS_PER_ADDRESS="100000",
            NOTIFIER_NEW_CONNECTIONS_PER_S_PER_ADDRESS="100000",
            NOTIFIER_NEW_CONNECTIONS_BURST_PER_ADDRESS="100000",
            NOTIFIER_MAX_UNAUTHENTICATED_CONNECTIONS="100000",
            **extra_env,
        )
        service = Service(await start_notifier("serve", *args, env=env, port=port, ready=False), exchange)
        started.append(service)
        return service

    yield start
    for service in started:
        await service.process.end()
        await delete_queues(service.seen_queues | await asyncio.to_thread(instance_queues, exchange))


@pytest.fixture
async def proxy() -> AsyncIterator[CuttableProxy]:
    """A TCP line to the broker under test that the test can cut, stall or slow down (tests/faults.py)."""
    line = CuttableProxy()
    await line.start()
    yield line
    await line.stop()
