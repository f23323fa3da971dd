"""Both write paths, over real sockets: uvicorn's transport (what `notifier serve` picks) and plain ASGI sends
(what any other ASGI server gets), through the `write_path` fixture. The core socket tests of test_end_to_end.py
and the slow-client tests of test_bad_input.py run over both as well."""

from __future__ import annotations

from notifier.formats import closecodes
from tests.support import ConnectClient, Publisher, StartServer


async def test_uvicorn_connections_get_the_write_path_asked_for(
    start_server: StartServer, connect: ConnectClient, write_path: str
) -> None:
    running = await start_server()
    await connect(running, "alice")
    (session,) = running.node.sessions
    assert session.write_path == write_path


async def test_a_burst_larger_than_the_send_queue_reaches_a_fast_reader_in_order(
    start_server: StartServer, connect: ConnectClient, publisher: Publisher, write_path: str
) -> None:
    running = await start_server(send_queue_size=64, prefetch=1000)
    reader = await connect(running, "reader")
    count = 600
    for n in range(count):
        await publisher.publish("user.reader", {"n": n, "pad": "x" * 150})
    received = [(await reader.expect_event("user.reader", timeout=10))["data"]["n"] for _ in range(count)]
    assert received == list(range(count))
    assert running.node.stats.closes_by_code[closecodes.SLOW_CLIENT.code] == 0
    (session,) = running.node.sessions
    assert session.write_path == write_path
