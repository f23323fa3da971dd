"""Clients that try to exhaust the server, flood its log or lock others out, each against a real server.

Every attack is bounded in time and count and stays on loopback; 127.0.0.2 plays "another client address".
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import select
import signal
import socket
import sys
import time
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection

from notifier.formats import closecodes
from tests.processes import StartNotifier, notifier_env
from tests.support import (
    API_KEY,
    ConnectClient,
    Publisher,
    RunningServer,
    StartServer,
    free_port,
    token_for,
    wait_until,
)

OTHER_ADDRESS = "127.0.0.2"


def masked_frame(opcode: int, payload: bytes) -> bytes:
    """One client-to-server frame (clients must mask), payload under 64 KiB."""
    mask = os.urandom(4)
    body = bytes(byte ^ mask[index % 4] for index, byte in enumerate(payload))
    length = len(payload)
    if length < 126:
        head = bytes((0x80 | opcode, 0x80 | length))
    else:
        head = bytes((0x80 | opcode, 0x80 | 126)) + length.to_bytes(2, "big")
    return head + mask + body


def open_raw_websocket(port: int, source: str = "127.0.0.1", path: str = "/ws") -> socket.socket:
    """A WebSocket opened by hand, so a test can send what no well-behaved client library would."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        assert chunk, "closed during the handshake"
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def flood_pings_without_reading(sock: socket.socket, seconds: float) -> tuple[int, str]:
    """Send 125-byte pings as fast as the socket takes them, never reading; return bytes sent and how it ended."""
    sock.setblocking(False)
    burst = masked_frame(0x9, b"x" * 125) * 200
    pending = b""
    sent = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not pending:
            pending = burst
        try:
            count = sock.send(pending)
        except BlockingIOError:
            select.select([], [sock], [], 0.05)
            continue
        except OSError as error:
            return sent, f"closed by server: {error.__class__.__name__}"
        pending = pending[count:]
        sent += count
    return sent, "still open"


async def test_ping_flood_that_never_reads_holds_bounded_memory_and_is_dropped(start_server: StartServer) -> None:
    # Frame budget out of the way, so only backpressure stands between the flood and the server's memory.
    running = await start_server(client_frames_per_s=1e9, client_frames_burst=10**9, write_stall_timeout_s=2.0)
    sock = await asyncio.to_thread(open_raw_websocket, running.settings.port)
    flood = asyncio.create_task(asyncio.to_thread(flood_pings_without_reading, sock, 8.0))
    peak_buffered = 0
    while not flood.done():
        for protocol in running.server.server_state.connections:
            transport = getattr(protocol, "transport", None)
            if transport is not None and not transport.is_closing():
                peak_buffered = max(peak_buffered, transport.get_write_buffer_size())
        await asyncio.sleep(0.02)
    sent, ending = await flood
    sock.close()
    # Unbounded, the server queues a pong for every ping: ~8 MiB of pongs a second here.
    assert peak_buffered < 1024 * 1024, f"server buffered {peak_buffered} bytes of output for one client"
    assert ending.startswith("closed by server"), (ending, sent)
    assert sent < 64 * 1024 * 1024, f"the server kept reading: {sent} bytes taken"
    await wait_until(lambda: not running.node.sessions, timeout=5)


async def test_ping_flood_spends_the_frame_budget_and_is_closed_with_4004(
    server: RunningServer, connect: ConnectClient
) -> None:
    bystander = await connect(server, "bystander")
    flooder = await connect(server)  # not even signed in
    for _ in range(server.settings.client_frames_burst + 20):
        await flooder.ws.ping()
    await flooder.expect_close(closecodes.RATE_LIMITED.code)
    assert await bystander.request({"type": "ping", "id": 1}) == {"type": "pong", "id": 1}


async def test_a_signed_in_ping_flood_is_closed_with_4004(server: RunningServer, connect: ConnectClient) -> None:
    flooder = await connect(server, "alice")
    for _ in range(server.settings.client_frames_burst + 20):
        await flooder.ws.ping()
    await flooder.expect_close(closecodes.RATE_LIMITED.code)


def read_until_closed(sock: socket.socket, timeout: float, started: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes the socket, and how long after `started` that was."""
    sock.settimeout(timeout)
    received = b""
    try:
        while chunk := sock.recv(4096):
            received += chunk
    except TimeoutError:
        return received + b"<still open>", time.monotonic() - started
    except ConnectionResetError:
        pass
    return received, time.monotonic() - started


async def test_sockets_that_send_no_request_are_closed_after_the_handshake_timeout(
    start_server: StartServer, connect: ConnectClient
) -> None:
    running = await start_server(handshake_timeout_s=1.0)

    def silent_then_slow() -> list[tuple[bytes, float]]:
        started = time.monotonic()
        silent = socket.create_connection(("127.0.0.1", running.settings.port), source_address=(OTHER_ADDRESS, 0))
        slow = socket.create_connection(("127.0.0.1", running.settings.port))
        slow.sendall(b"GET /healthz HTTP/1.1\r\n")  # a request head that never ends (slowloris)
        results = [read_until_closed(silent, 5.0, started), read_until_closed(slow, 5.0, started)]
        silent.close()
        slow.close()
        return results

    for received, seconds in await asyncio.to_thread(silent_then_slow):
        assert received == b"", received
        assert 0.8 < seconds < 3.0, seconds
    # Sockets that did complete a request are served as before, well past the handshake timeout.
    client = await connect(running, "alice")
    await asyncio.sleep(1.5)
    assert await client.request({"type": "ping", "id": 7}) == {"type": "pong", "id": 7}


def send_and_read_close(port: int, payload: bytes, path: str = "/ws") -> int | None:
    """Send one text frame and return the close code the server answers with."""
    sock = open_raw_websocket(port, path=path)
    try:
        sock.sendall(masked_frame(0x1, payload))
        received, _ = read_until_closed(sock, 5.0, time.monotonic())
    finally:
        sock.close()
    if len(received) >= 4 and received[0] == 0x88:
        return int.from_bytes(received[2:4], "big")
    return None


async def test_invalid_utf8_is_closed_with_1007_and_logged_as_one_short_line_without_the_token(
    exchange: str, start_notifier: StartNotifier
) -> None:
    port = free_port()
    token = token_for("alice")
    percent_encoded_name = "%74oken"  # "token", as a proxy might pass it on
    process = await start_notifier("serve", env=notifier_env(port, exchange), port=port)

    def attack() -> list[int | None]:
        codes = [send_and_read_close(port, b'{"type": "auth", "token": "' + token.encode() + b'"}\xff')]
        query = f"/ws?{percent_encoded_name}={token}&x=1"
        codes.append(send_and_read_close(port, b"\xff", path=query))
        codes += [send_and_read_close(port, b"a" * 60_000 + b"\xff") for _ in range(30)]
        return codes

    codes = await asyncio.to_thread(attack)
    await process.stop()
    logs = process.logs()
    assert codes == [1007] * 32
    assert token.split(".")[2] not in logs  # not the signature, let alone the whole token
    records = [json.loads(line) for line in logs.splitlines() if line.strip()]
    assert not [record for record in records if record["level"] in ("error", "critical")]
    faults = [record for record in records if record["event"] == "invalid_utf8"]
    assert len(faults) == 32
    assert {record["level"] for record in faults} == {"info"}
    # 32 frames of up to 60 KB: a short line each, never the frame (before: ~60 KB a line, at ERROR).
    assert len(logs.encode()) < 32 * 400 + 4000, len(logs.encode())


async def open_websocket(
    running: RunningServer, *, source: str = "127.0.0.1", headers: dict[str, str] | None = None, query: str = ""
) -> ClientConnection | tuple[int, dict[str, Any]]:
    """An open WebSocket, or the HTTP status and JSON body the handshake was refused with."""
    try:
        return await websockets.connect(
            running.ws_url + query, local_addr=(source, 0), additional_headers=headers, open_timeout=5
        )
    except websockets.InvalidStatus as refused:
        return refused.response.status_code, json.loads(refused.response.body or b"{}")


async def sign_in(connection: ClientConnection, user: str) -> dict[str, Any]:
    await connection.send(json.dumps({"type": "auth", "token": token_for(user)}))
    return dict(json.loads(await asyncio.wait_for(connection.recv(), 5)))


async def close_all(connections: list[Any]) -> None:
    for connection in connections:
        if isinstance(connection, ClientConnection):
            await connection.close()


async def test_one_address_cannot_take_the_slots_of_others(start_server: StartServer) -> None:
    running = await start_server(max_connections=60, max_connections_per_address=20, auth_timeout_s=30)
    # 70 sockets that never sign in, from one address: once, they held the whole instance (4003 for others).
    attackers = [await open_websocket(running) for _ in range(70)]
    refused = [answer for answer in attackers if isinstance(answer, tuple)]
    assert len(refused) == 50
    assert {status for status, _ in refused} == {429}
    assert refused[0][1]["error"] == "too_many_connections"
    users = [await open_websocket(running, source=OTHER_ADDRESS) for _ in range(10)]
    for index, user in enumerate(users):
        assert isinstance(user, ClientConnection), user
        assert (await sign_in(user, f"user{index}"))["type"] == "welcome"
    await close_all(attackers + users)


async def test_new_connections_per_second_are_limited_per_address(start_server: StartServer) -> None:
    running = await start_server(new_connections_per_s_per_address=2, new_connections_burst_per_address=5)
    burst = [await open_websocket(running) for _ in range(12)]
    refused = [answer for answer in burst if isinstance(answer, tuple)]
    assert 5 <= len(refused) <= 7, refused  # 5 from the burst, plus what refilled meanwhile
    assert {(status, body["error"]) for status, body in refused} == {(429, "too_many_new_connections")}
    other = await open_websocket(running, source=OTHER_ADDRESS)
    assert isinstance(other, ClientConnection)
    await asyncio.sleep(1.0)  # the budget refills
    again = await open_websocket(running)
    assert isinstance(again, ClientConnection)
    await close_all([*burst, other, again])


async def test_anonymous_sockets_cannot_starve_signed_in_users(start_server: StartServer) -> None:
    running = await start_server(max_connections=40, max_unauthenticated_connections=10, auth_timeout_s=2)
    signed_in = await open_websocket(running, source=OTHER_ADDRESS)
    assert isinstance(signed_in, ClientConnection)
    assert (await sign_in(signed_in, "early"))["type"] == "welcome"
    anonymous = [await open_websocket(running) for _ in range(30)]
    refused = [answer for answer in anonymous if isinstance(answer, tuple)]
    assert len(refused) == 20
    assert {(status, body["error"]) for status, body in refused} == {(503, "busy")}
    # A login that carries its token signs in at once, so it does not wait for an anonymous slot.
    with_token = await open_websocket(running, source=OTHER_ADDRESS, query=f"?token={token_for('late')}")
    assert isinstance(with_token, ClientConnection)
    assert json.loads(await asyncio.wait_for(with_token.recv(), 5))["type"] == "welcome"
    await signed_in.send('{"type": "ping", "id": 1}')
    assert json.loads(await asyncio.wait_for(signed_in.recv(), 5)) == {"type": "pong", "id": 1}
    # The anonymous sockets are closed at the auth timeout, which frees their budget.
    await wait_until(lambda: running.node.admission.authenticated == len(running.node.sessions), timeout=6)
    after = await open_websocket(running, source=OTHER_ADDRESS)
    assert isinstance(after, ClientConnection)
    assert (await sign_in(after, "after"))["type"] == "welcome"
    await close_all([*anonymous, signed_in, with_token, after])


async def test_client_address_comes_from_a_trusted_proxy_only(start_server: StartServer) -> None:
    behind_proxy = await start_server(forwarded_allow_ips=["127.0.0.1"], max_connections_per_address=2)
    first, second, third, other = [
        await open_websocket(behind_proxy, headers={"X-Forwarded-For": address})
        for address in ("203.0.113.5", "203.0.113.5", "203.0.113.5", "203.0.113.6")
    ]
    assert isinstance(first, ClientConnection) and isinstance(second, ClientConnection)
    assert isinstance(third, tuple) and third[0] == 429
    assert isinstance(other, ClientConnection)  # another client behind the same proxy
    # Without a trusted proxy, X-Forwarded-For is the client's own claim and is ignored.
    direct = await start_server(max_connections_per_address=2)
    spoofed = [await open_websocket(direct, headers={"X-Forwarded-For": f"198.51.100.{number}"}) for number in range(3)]
    assert isinstance(spoofed[2], tuple) and spoofed[2][0] == 429
    await close_all([first, second, other, *spoofed])


async def test_many_accounts_dropping_connections_cannot_evict_a_bystanders_parked_session(
    start_server: StartServer, publisher: Publisher
) -> None:
    """Accounts on many addresses connect and drop without a goodbye, over and over, to fill the parked pool.
    Each keeps at most its per-user bound, the pool evicts the accounts' own sessions, and a bystander who
    dropped first still resumes with what it missed."""
    accounts, drops, per_user, pool = 30, 10, 5, 100
    running = await start_server(
        max_connections_per_user=per_user, max_parked_sessions=pool, resume_window_s=60, write_path="asgi"
    )
    directory = running.node.directory

    async def signed_in(user: str, address: str) -> tuple[ClientConnection, dict[str, Any]]:
        ws = await websockets.connect(running.ws_url, local_addr=(address, 0), open_timeout=5)
        await ws.send(json.dumps({"type": "auth", "token": token_for(user)}))
        welcome: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert welcome["type"] == "welcome", welcome
        return ws, welcome

    def drop(ws: ClientConnection) -> None:
        ws.transport.abort()  # no close frame: the session parks

    bystander, welcome = await signed_in("bystander", "127.0.0.1")
    drop(bystander)
    await wait_until(lambda: directory.parked_count_of("bystander") == 1, 5)

    async def attack(account: int) -> None:
        address = f"127.0.0.{account + 2}"
        for _ in range(drops):
            ws, _ = await signed_in(f"mallory{account}", address)
            drop(ws)

    await asyncio.gather(*(attack(account) for account in range(accounts)))
    await wait_until(lambda: directory.parked_count == pool, 10)
    users = [f"mallory{account}" for account in range(accounts)]
    await wait_until(lambda: sum(directory.parked_count_of(user) for user in users) == pool - 1, 10)
    assert max(directory.parked_count_of(user) for user in users) <= per_user
    assert directory.parked_count_of("bystander") == 1

    await publisher.publish("user.bystander", {"missed": True})
    await wait_until(lambda: any(s.history.sent for s in running.node.parked_sessions_of("bystander")), 5)
    ws = await websockets.connect(running.ws_url, open_timeout=5)
    resume = {"session": welcome["session"], "received": 0}
    await ws.send(json.dumps({"type": "auth", "token": token_for("bystander"), "resume": resume}))
    again = json.loads(await asyncio.wait_for(ws.recv(), 5))
    assert (again["type"], again["recovered"]) == ("welcome", True), again
    event = json.loads(await asyncio.wait_for(ws.recv(), 5))
    assert (event["type"], event["data"]) == ("event", {"missed": True})
    await ws.close()


def maximal_publish_body(events: int = 63, event_bytes: int = 64 * 1024) -> bytes:
    """A batch just under the default body limit whose data parses into as many objects as it can: arrays of
    empty arrays (about 3.9 MiB; each `[]` a list once parsed)."""
    data = b"[" + b"[]," * ((event_bytes - 4) // 3) + b"[]]"
    return b'{"events":[' + b",".join(b'{"topic":"flood.x","data":' + data + b"}" for _ in range(events)) + b"]}"


PINGER = """
import asyncio, json, signal, sys, time
import websockets

async def main(port, token):
    ws = await websockets.connect(f"ws://127.0.0.1:{port}/ws", ping_interval=None)
    await ws.send(json.dumps({"type": "auth", "token": token}))
    assert json.loads(await ws.recv())["type"] == "welcome"
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGINT, stop.set)
    print("ready", flush=True)
    rtts, number = [], 0
    while not stop.is_set():
        number += 1
        started = time.perf_counter()
        await ws.send(json.dumps({"type": "ping", "id": number}))
        assert json.loads(await asyncio.wait_for(ws.recv(), 30)) == {"type": "pong", "id": number}
        rtts.append(time.perf_counter() - started)
        try:
            await asyncio.wait_for(stop.wait(), 0.075)
        except TimeoutError:
            pass
    print(json.dumps(rtts), flush=True)

asyncio.run(main(int(sys.argv[1]), sys.argv[2]))
"""


def post_raw(port: int, path: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
    """POST `body` with the API key over a plain socket; the status, headers and body of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {API_KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = sock.recv(65536)
            assert chunk, received
            received += chunk
        head, _, rest = received.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
        while len(rest) < int(headers["content-length"]):
            rest += sock.recv(65536)
        return int(lines[0].split()[1]), headers, rest


def peak_rss_mib(pid: int) -> float:
    for line in open(f"/proc/{pid}/status").read().splitlines():  # noqa: SIM115
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmHWM for {pid}")


def children_of(pid: int) -> list[int]:
    found: list[int] = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as children:
            found += [int(child) for child in children.read().split()]
    return found


async def test_thirty_maximal_publish_batches_at_once_keep_the_loop_responsive_and_memory_bounded(
    exchange: str, start_notifier: StartNotifier
) -> None:
    """30 batches of 3.9 MiB that parse into millions of objects, sent at once (before: 2.6 GiB of RSS and a
    ping round trip of 0.6 s). Bodies past the bounds in flight are refused at once with 503 `busy` and
    Retry-After; the others are parsed one at a time in the parse process; a signed-in client's pings keep
    being answered (the median under 50 ms, none held for half a second), and the serving process's memory
    stays within its documented bound."""
    port = free_port()
    process = await start_notifier("serve", env=notifier_env(port, exchange, NOTIFIER_LOG_FORMAT="json"), port=port)
    pinger = await asyncio.create_subprocess_exec(
        sys.executable, "-c", PINGER, str(port), token_for("watcher"), stdout=asyncio.subprocess.PIPE
    )
    assert pinger.stdout is not None
    assert (await asyncio.wait_for(pinger.stdout.readline(), 10)).strip() == b"ready"
    body = maximal_publish_body()
    # Sent by threads over plain sockets (the sends release the interpreter lock), so this process takes
    # little of the machine's CPU from the server and the pinger.
    answers = await asyncio.gather(*(asyncio.to_thread(post_raw, port, "/api/publish", body) for _ in range(30)))
    pinger.send_signal(signal.SIGINT)
    rtts = json.loads(await asyncio.wait_for(pinger.stdout.read(), 10))
    await pinger.wait()
    accepted = [answer for answer in answers if answer[0] == 202]
    refused = [answer for answer in answers if answer[0] != 202]
    assert len(accepted) >= 1 and len(accepted) + len(refused) == 30
    for status, headers, answer in refused:
        assert (status, json.loads(answer)["error"]) == (503, "busy"), answer[:300]
        assert headers["retry-after"] == "1"
    assert len(rtts) >= 10, rtts
    # The loop is never held for whole seconds (before: 0.6 s, and 19 s for ten batches). The ping's round trip
    # in milliseconds is the benchmark's to show (python -m bench.publish_flood), not a timed test's: on a shared
    # machine a neighbour can hold the core for a moment.
    assert sorted(rtts)[len(rtts) // 2] < 0.05, sorted(rtts)
    assert max(rtts) < 0.5, sorted(rtts)[-5:]
    # The documented bound (docs/guarantees.md): the serving process stays near its idle size; the parse
    # process holds one body's objects at a time.
    assert peak_rss_mib(process.pid) < 160, peak_rss_mib(process.pid)
    assert sum(peak_rss_mib(child) for child in children_of(process.pid)) < 250
    records = process.log_records()
    assert not [record for record in records if record["level"] in ("error", "critical")]


async def test_a_trickling_body_gets_408_and_a_client_leaving_mid_body_is_one_info_line(
    exchange: str, start_notifier: StartNotifier
) -> None:
    """Authenticated requests whose body trickles in are answered 408 and closed after
    NOTIFIER_REQUEST_BODY_TIMEOUT_S (before: held open with no bound); clients that leave mid-body are one INFO
    line each (before: an ERROR traceback of ~5 KB each)."""
    port = free_port()
    env = notifier_env(port, exchange, NOTIFIER_LOG_FORMAT="json", NOTIFIER_REQUEST_BODY_TIMEOUT_S="1")
    process = await start_notifier("serve", env=env, port=port)
    head = (
        f"POST /api/publish HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {API_KEY}\r\n"
        "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    ).encode()

    def trickle_and_leave() -> tuple[list[tuple[bytes, float]], int]:
        started = time.monotonic()
        trickling = [
            socket.create_connection(("127.0.0.1", port), source_address=(f"127.0.0.{2 + n % 5}", 0)) for n in range(20)
        ]
        for sock in trickling:
            sock.sendall(head + b'{"topic": "user.a", ')
        leaving = [socket.create_connection(("127.0.0.1", port)) for _ in range(20)]
        for sock in leaving:
            sock.sendall(head + b'{"topic": "user.a", "data": ')
        time.sleep(0.3)
        for sock in leaving:
            sock.close()
        for _ in range(4):  # a byte every 0.3 s, for longer than the timeout
            for sock in trickling:
                with contextlib.suppress(OSError):
                    sock.sendall(b" ")
            time.sleep(0.3)
        answers = [read_until_closed(sock, 5.0, started) for sock in trickling]
        for sock in trickling:
            sock.close()
        return answers, len(leaving)

    answers, left = await asyncio.to_thread(trickle_and_leave)
    for received, seconds in answers:
        assert received.startswith(b"HTTP/1.1 408 "), received[:200]
        assert b'"error":"timeout"' in received
        assert seconds < 3.5, seconds
    await wait_until(
        lambda: sum(record["event"] == "request_body_abandoned" for record in process.log_records()) == left, 5
    )
    await process.stop()
    records = process.log_records()
    assert not [record for record in records if record["level"] in ("error", "critical")]
    assert "Traceback" not in process.logs()
    abandoned = [record for record in records if record["event"] == "request_body_abandoned"]
    timed_out = [record for record in records if record["event"] == "request_body_timed_out"]
    assert {record["level"] for record in abandoned + timed_out} == {"info"}
    assert (len(abandoned), len(timed_out)) == (20, 20)
