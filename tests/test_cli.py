"""The `notifier` command as a user runs it: real processes, real sockets."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import time
from contextlib import suppress
from typing import Any

import aio_pika
import httpx
import jwt
import orjson
import pytest
import websockets

from notifier.formats.events import TIMESTAMP_MS_HEADER
from tests.processes import StartNotifier, notifier_env, run_cli
from tests.support import AMQP_URL, API_KEY, SECRET, StartServer, free_port, receive_json, token_for


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
async def test_dev_mode_and_publish_work_with_no_flags(start_notifier: StartNotifier) -> None:
    port = free_port()
    env = {"NOTIFIER_PORT": str(port)}
    process = await start_notifier("dev", env=notifier_env(**env), port=port)
    banner = process.output()  # printed, and flushed, before it listens
    token = re.search(r"(eyJ[\w-]+\.[\w-]+\.[\w-]+)", banner)
    assert token is not None, banner
    async with websockets.connect(f"ws://127.0.0.1:{port}/ws?token={token.group(1)}") as ws:
        welcome = await receive_json(ws)
        assert welcome["user"] == "demo"
        result = await asyncio.to_thread(run_cli, "publish", "user.demo", '{"hello": "world"}', env=env)
        assert result.returncode == 0, result.stderr
        event = await receive_json(ws)
        assert event["data"] == {"hello": "world"}
        assert event["id"] == json.loads(result.stdout)["id"]


async def test_serve_logs_json_never_logs_the_token_and_stops_with_1012(
    exchange: str, start_notifier: StartNotifier
) -> None:
    port = free_port()
    token = token_for("alice")
    process = await start_notifier("serve", env=notifier_env(port, exchange), port=port)
    ws = await websockets.connect(f"ws://127.0.0.1:{port}/ws?token={token}")
    assert (await receive_json(ws))["type"] == "welcome"
    await ws.send('{"type": "auth", "token": "' + token + '"}')  # a second auth: answered, never logged
    assert (await receive_json(ws))["code"] == "bad_request"
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    with suppress(websockets.ConnectionClosed):
        await asyncio.wait_for(ws.recv(), 10)
    assert ws.close_code == 1012
    assert await process.wait(15) == 0
    assert time.monotonic() - started < 10
    logs = process.logs()
    assert token not in logs
    assert token.split(".")[2] not in logs  # not even the signature
    lines = [line for line in logs.splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # one JSON object per line
    events = {record["event"] for record in records}
    assert "connection_authenticated" in events
    authenticated = next(record for record in records if record["event"] == "connection_authenticated")
    assert authenticated["user"] == "alice"
    assert authenticated["conn"]


async def test_publish_straight_to_rabbitmq(exchange: str, start_notifier: StartNotifier) -> None:
    port = free_port()
    env = notifier_env(port, exchange)
    await start_notifier("serve", env=env, port=port)
    async with websockets.connect(f"ws://127.0.0.1:{port}/ws?token={token_for('alice')}") as ws:
        assert (await receive_json(ws))["type"] == "welcome"
        result = await asyncio.to_thread(run_cli, "publish", "--amqp", "--id", "e-1", "user.alice", "[true]", env=env)
        assert result.returncode == 0, result.stderr
        # Compact, as the HTTP path prints it.
        assert result.stdout.strip() == '{"id":"e-1","topic":"user.alice"}'
        event = await receive_json(ws)
        assert (event["id"], event["data"]) == ("e-1", [True])


def message_properties(message: aio_pika.abc.AbstractIncomingMessage) -> dict[str, Any]:
    """What a consumer sees of a message besides its id and the moment it was sent."""
    return {
        "body": message.body,
        "content_type": message.content_type,
        "content_encoding": message.content_encoding,
        "delivery_mode": message.delivery_mode,
        "priority": message.priority,
        "expiration": message.expiration,
        "type": message.type,
        "app_id": message.app_id,
        "reply_to": message.reply_to,
        "correlation_id": message.correlation_id,
        "headers": sorted(message.headers),
        "has_timestamp": message.timestamp is not None,
    }


async def test_the_cli_publishes_the_same_persistent_message_as_the_http_api(
    start_server: StartServer, exchange: str
) -> None:
    server = await start_server()
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(exclusive=True)
        await queue.bind(exchange, "probe.*")  # the server declared the exchange
        async with httpx.AsyncClient() as http:
            answer = await http.post(
                f"{server.http_url}/api/publish",
                json={"topic": "probe.api", "data": {"n": [1, 2]}, "id": "via-api"},
                headers={"Authorization": f"Bearer {API_KEY}"},
            )
        assert answer.status_code == 202, answer.text
        env = {"NOTIFIER_AMQP_URL": AMQP_URL, "NOTIFIER_EXCHANGE": exchange}
        amqp = await asyncio.to_thread(
            run_cli, "publish", "--amqp", "--id", "via-cli-amqp", "probe.cli_amqp", '{"n": [1, 2]}', env=env
        )
        assert amqp.returncode == 0, amqp.stderr
        http_args = ("--url", server.http_url, "--api-key", API_KEY, "--id", "via-cli-http")
        over_http = await asyncio.to_thread(run_cli, "publish", *http_args, "probe.cli_http", '{"n": [1, 2]}')
        assert over_http.returncode == 0, over_http.stderr
        assert orjson.loads(over_http.stdout) == {"id": "via-cli-http", "topic": "probe.cli_http"}
        # Each publish returned only once RabbitMQ confirmed it: all three are in the queue, in order.
        messages = [await queue.get(timeout=5) for _ in range(3)]
    assert [message.message_id for message in messages] == ["via-api", "via-cli-amqp", "via-cli-http"]
    api, *cli = (message_properties(message) for message in messages)
    assert api["delivery_mode"] == aio_pika.DeliveryMode.PERSISTENT
    assert api["headers"] == [TIMESTAMP_MS_HEADER]
    assert cli == [api, api]


@pytest.mark.loopback  # a closed port on 127.0.0.1
def test_publish_reports_an_unreachable_server() -> None:
    result = run_cli("publish", "a", "1", "--url", f"http://127.0.0.1:{free_port()}", "--api-key", "k")
    assert result.returncode == 2
    assert "cannot reach" in result.stderr


def test_publish_refuses_bad_json() -> None:
    result = run_cli("publish", "a", "{nope", "--api-key", "k")
    assert result.returncode == 2
    assert "not valid JSON" in result.stderr


def test_a_short_api_key_is_a_clear_config_error() -> None:
    result = run_cli("serve", env={"NOTIFIER_JWT_SECRET": SECRET, "NOTIFIER_API_KEYS": "long-enough-key-0123,short"})
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert "NOTIFIER_API_KEYS" in result.stderr
    assert "at least 16 characters" in result.stderr


async def test_serve_without_allowed_origins_warns_and_lets_its_own_demo_page_connect(
    exchange: str, start_notifier: StartNotifier
) -> None:
    port = free_port()
    process = await start_notifier("serve", env=notifier_env(port, exchange, NOTIFIER_DEMO_PAGE="true"), port=port)
    async with httpx.AsyncClient() as http:
        assert (await http.get(f"http://127.0.0.1:{port}/")).status_code == 200  # the demo page is served
    page_origin = f"http://127.0.0.1:{port}"
    async with websockets.connect(f"ws://127.0.0.1:{port}/ws", origin=page_origin) as ws:  # type: ignore[arg-type]
        await ws.send(orjson.dumps({"type": "auth", "token": token_for("alice")}).decode())
        assert (await receive_json(ws))["type"] == "welcome"
    await process.stop()
    logs = process.logs()
    warning = next(json.loads(line) for line in logs.splitlines() if "allowed_origins_empty" in line)
    assert warning["level"] == "warning"
    assert "NOTIFIER_ALLOWED_ORIGINS" in warning["hint"]


def test_env_file_works_before_and_after_the_command_and_a_missing_one_is_an_error(tmp_path: Any) -> None:
    env_file = tmp_path / "notifier.env"
    env_file.write_text(f"NOTIFIER_JWT_SECRET={SECRET}\n")
    for args in (("--env-file", str(env_file), "token", "bob"), ("token", "bob", "--env-file", str(env_file))):
        result = run_cli(*args)
        assert result.returncode == 0, result.stderr
        assert jwt.decode(result.stdout.strip(), SECRET, algorithms=["HS256"])["sub"] == "bob"
    missing = run_cli("token", "bob", "--env-file", str(tmp_path / "nope.env"))
    assert missing.returncode == 2
    assert missing.stderr.strip() == f"notifier: --env-file {tmp_path / 'nope.env'}: no such file"


def test_a_misspelled_setting_is_warned_about_with_a_suggestion(tmp_path: Any) -> None:
    env_file = tmp_path / "notifier.env"
    env_file.write_text(f"NOTIFIER_JWT_SECRET={SECRET}\nNOTIFIER_ALLOWED_ORIGIN=https://app.example.com\n")
    result = run_cli("token", "bob", "--env-file", str(env_file), env={"NOTIFIER_PROT": "9000"})
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        "notifier: warning: unknown setting NOTIFIER_ALLOWED_ORIGIN is ignored "
        "(did you mean NOTIFIER_ALLOWED_ORIGINS?)",
        "notifier: warning: unknown setting NOTIFIER_PROT is ignored (did you mean NOTIFIER_PORT?)",
    ]


def test_each_bad_setting_gets_one_plain_line() -> None:
    result = run_cli("serve", env={"NOTIFIER_PORT": "eighty", "NOTIFIER_WORKERS": "0", "NOTIFIER_JWT_SECRET": SECRET})
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "notifier: invalid setting NOTIFIER_PORT: Input should be a valid integer, "
        "unable to parse string as an integer",
        "notifier: invalid setting NOTIFIER_WORKERS: Input should be greater than or equal to 1 "
        "or Input should be 'auto'",
    ]
    short = run_cli("serve", env={"NOTIFIER_JWT_SECRET": "short"})
    assert short.stderr.strip() == "notifier: invalid setting NOTIFIER_JWT_SECRET: must be at least 32 bytes long"


def test_every_bad_setting_is_reported_at_once_the_secret_too() -> None:
    result = run_cli(
        "serve",
        env={"NOTIFIER_JWT_SECRET": "short", "NOTIFIER_API_KEYS": "short", "NOTIFIER_MAX_CONNECTIONS": "-1"},
    )
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 3, result.stderr
    assert [line.split(":")[1].split()[-1] for line in lines] == [
        "NOTIFIER_JWT_SECRET",
        "NOTIFIER_API_KEYS",
        "NOTIFIER_MAX_CONNECTIONS",
    ]


def test_version_is_printed() -> None:
    result = run_cli("--version")
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(r"notifier \d+\.\d+\.\d+\S*", result.stdout.strip()), result.stdout


def test_the_json_argument_is_called_json_in_the_help_and_the_error() -> None:
    help_text = run_cli("publish", "--help").stdout
    assert "JSON" in help_text
    assert "DATA" not in help_text
    error = run_cli("publish", "a", "{nope", "--api-key", "k").stderr
    assert error.startswith("notifier: JSON: not valid JSON"), error


def test_token_takes_url_like_publish_and_both_say_the_same_with_several_dev_servers(tmp_path: Any) -> None:
    env = {"TMPDIR": str(tmp_path), "XDG_RUNTIME_DIR": ""}
    # Two dev servers "running": their state files name this (live) process.
    state_dir = tmp_path / f"notifier-{os.getuid()}"
    state_dir.mkdir(mode=0o700)
    secrets = {9101: SECRET, 9102: SECRET[::-1]}
    for port, secret in secrets.items():
        state = {"url": f"http://127.0.0.1:{port}", "port": port, "pid": os.getpid(), "jwt_secret": secret}
        (state_dir / f"dev-{port}.json").write_text(json.dumps(state | {"api_key": API_KEY}))
    assert "--url" in run_cli("token", "--help").stdout
    token_error = run_cli("token", "bob", env=env).stderr.strip()
    publish_error = run_cli("publish", "a", "1", env=env).stderr.strip()
    hint = "(notifier dev runs on ports [9101, 9102]: pass --url)"
    assert token_error.endswith(hint), token_error
    assert publish_error.endswith(hint), publish_error
    chosen = run_cli("token", "bob", "--url", "http://127.0.0.1:9102", env=env)
    assert chosen.returncode == 0, chosen.stderr
    assert jwt.decode(chosen.stdout.strip(), secrets[9102], algorithms=["HS256"])["sub"] == "bob"
