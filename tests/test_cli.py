"""The `notifier` command as a user runs it: real processes, real sockets."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import time
from contextlib import suppress

import jwt
import pytest
import websockets

from tests.support import SECRET, free_port, receive_json, run_cli, running_process, serve_env, token_for


def test_help_lists_the_commands() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("serve", "dev", "publish", "token"):
        assert command in result.stdout


def test_invalid_setting_fails_with_one_line_naming_it() -> None:
    result = run_cli("serve", env={"NOTIFIER_PORT": "eighty", "NOTIFIER_JWT_SECRET": SECRET})
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert "NOTIFIER_PORT" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_token_key_fails_with_one_line() -> None:
    result = run_cli("serve")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert "NOTIFIER_JWT_SECRET" in result.stderr


def test_short_secret_is_refused() -> None:
    result = run_cli("serve", env={"NOTIFIER_JWT_SECRET": "short"})
    assert result.returncode == 2
    assert "32 bytes" in result.stderr


def test_token_command_mints_a_verifiable_token() -> None:
    result = run_cli("token", "alice", "--topics", "news.#", "orders.*", env={"NOTIFIER_JWT_SECRET": SECRET})
    assert result.returncode == 0, result.stderr
    claims = jwt.decode(result.stdout.strip(), SECRET, algorithms=["HS256"])
    assert claims["sub"] == "alice"
    assert claims["topics"] == ["news.#", "orders.*"]
    assert claims["exp"] > time.time() + 3000


def test_token_command_refuses_bad_input() -> None:
    assert run_cli("token", "a.b", env={"NOTIFIER_JWT_SECRET": SECRET}).returncode == 2
    assert run_cli("token", "alice", "--topics", "a..b", env={"NOTIFIER_JWT_SECRET": SECRET}).returncode == 2


@pytest.mark.loopback
async def test_dev_mode_and_publish_work_with_no_flags() -> None:
    port = free_port()
    env = {"NOTIFIER_PORT": str(port)}
    async with running_process(["dev"], env, port) as process:
        banner = b""
        while b"Publish:" not in banner:
            banner += await asyncio.wait_for(process.stdout.readline(), 5)  # type: ignore[union-attr]
        token = re.search(rb"(eyJ[\w-]+\.[\w-]+\.[\w-]+)", banner)
        assert token is not None, banner
        async with websockets.connect(f"ws://127.0.0.1:{port}/ws?token={token.group(1).decode()}") as ws:
            welcome = await receive_json(ws)
            assert welcome["user"] == "demo"
            result = await asyncio.to_thread(run_cli, "publish", "user.demo", '{"hello": "world"}', env=env)
            assert result.returncode == 0, result.stderr
            event = await receive_json(ws)
            assert event["data"] == {"hello": "world"}
            assert event["id"] == json.loads(result.stdout)["id"]


async def test_serve_logs_json_never_logs_the_token_and_stops_with_1012(exchange: str) -> None:
    port = free_port()
    token = token_for("alice")
    async with running_process(["serve"], serve_env(port, exchange), port) as process:
        ws = await websockets.connect(f"ws://127.0.0.1:{port}/ws?token={token}")
        assert (await receive_json(ws))["type"] == "welcome"
        await ws.send('{"type": "auth", "token": "' + token + '"}')  # a second auth: answered, never logged
        assert (await receive_json(ws))["code"] == "bad_request"
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        with suppress(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 10)
        assert ws.close_code == 1012
        assert await asyncio.wait_for(process.wait(), 15) == 0
        assert time.monotonic() - started < 10
        logs = (await process.stderr.read()).decode()  # type: ignore[union-attr]
    assert token not in logs
    assert token.split(".")[2] not in logs  # not even the signature
    lines = [line for line in logs.splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # one JSON object per line
    events = {record["event"] for record in records}
    assert "connection_authenticated" in events
    authenticated = next(record for record in records if record["event"] == "connection_authenticated")
    assert authenticated["user"] == "alice"
    assert authenticated["conn"]


async def test_publish_straight_to_rabbitmq(exchange: str) -> None:
    port = free_port()
    env = serve_env(port, exchange)
    url = f"ws://127.0.0.1:{port}/ws?token={token_for('alice')}"
    async with running_process(["serve"], env, port), websockets.connect(url) as ws:
        assert (await receive_json(ws))["type"] == "welcome"
        result = await asyncio.to_thread(run_cli, "publish", "--amqp", "--id", "e-1", "user.alice", "[true]", env=env)
        assert result.returncode == 0, result.stderr
        event = await receive_json(ws)
        assert (event["id"], event["data"]) == ("e-1", [True])


@pytest.mark.loopback  # a closed port on 127.0.0.1
def test_publish_reports_an_unreachable_server() -> None:
    result = run_cli("publish", "a", "1", "--url", f"http://127.0.0.1:{free_port()}", "--api-key", "k")
    assert result.returncode == 2
    assert "cannot reach" in result.stderr


def test_publish_refuses_bad_json() -> None:
    result = run_cli("publish", "a", "{nope", "--api-key", "k")
    assert result.returncode == 2
    assert "not valid JSON" in result.stderr
