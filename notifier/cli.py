"""The `notifier` command: serve, dev, publish, token."""

from __future__ import annotations

import argparse
import asyncio
import difflib
import json
import os
import secrets
import shutil
import sys
import urllib.parse
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, NoReturn

import orjson
import pydantic
import structlog

from notifier.connection.auth import mint_token
from notifier.logs import configure_logging
from notifier.runtime import devstate
from notifier.settings import ConfigError, Settings

# How long `notifier publish` waits for the server's answer.
HTTP_TIMEOUT_S = 10.0


def command_name() -> str:
    """How the user can run this command again: `notifier` if that is what is on PATH, else the path they used,
    else `python -m notifier`."""
    invoked = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if invoked is None or invoked.name != "notifier":
        return f"{sys.executable} -m notifier"
    on_path = shutil.which("notifier")
    if on_path and Path(on_path).resolve() == invoked.resolve():
        return "notifier"
    return str(invoked)


def load_settings(env_file: str | None, **overrides: Any) -> Settings:
    """Read settings; bad ones end the program with one plain line each that names the setting. Unknown
    NOTIFIER_* names (in the environment or the env file) get a warning, since a typo would otherwise be ignored."""
    if env_file is not None and not Path(env_file).is_file():
        fail(f"--env-file {env_file}: no such file")
    warn_unknown_settings(env_file)
    try:
        settings = Settings(_env_file=env_file, **overrides)  # type: ignore[call-arg]
    except pydantic.ValidationError as error:
        for line in setting_errors(error):
            print(f"notifier: {line}", file=sys.stderr)
        raise SystemExit(2) from None
    return settings


def setting_errors(error: pydantic.ValidationError) -> list[str]:
    """One line per bad setting: `invalid setting NOTIFIER_X: why` (the alternatives of a union joined)."""
    by_setting: dict[str, list[str]] = {}
    for item in error.errors():
        field = str(item["loc"][0]) if item["loc"] else ""
        message = item["msg"].removeprefix("Value error, ")
        messages = by_setting.setdefault(field, [])
        if message not in messages:
            messages.append(message)
    return [
        f"invalid setting NOTIFIER_{field.upper()}: {' or '.join(messages)}" if field else "; ".join(messages)
        for field, messages in by_setting.items()
    ]


def warn_unknown_settings(env_file: str | None) -> None:
    known = {f"NOTIFIER_{name.upper()}" for name in Settings.model_fields}
    names = {name.upper() for name in os.environ}
    if env_file is not None:
        from dotenv import dotenv_values

        names |= {name.upper() for name in dotenv_values(env_file)}
    for name in sorted(names):
        if name.startswith("NOTIFIER_") and name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            print(f"notifier: warning: unknown setting {name} is ignored{hint}", file=sys.stderr)


def fail(message: str) -> NoReturn:
    print(f"notifier: {message}", file=sys.stderr)
    raise SystemExit(2)


def cmd_serve(args: argparse.Namespace) -> None:
    overrides: dict[str, Any] = {}
    if args.host:
        overrides["host"] = args.host
    if args.port is not None:
        overrides["port"] = args.port
    if args.workers is not None:
        overrides["workers"] = args.workers
    settings = load_settings(args.env_file, **overrides)
    configure_logging(settings.log_format, settings.log_level)
    from notifier.runtime.workers import check_workers, serve_workers

    try:
        settings.require_token_key()
        check_workers(settings)
    except ConfigError as error:
        fail(str(error))
    if not settings.allowed_origins:
        structlog.get_logger("notifier.cli").warning(
            "allowed_origins_empty",
            hint="only pages served from this server's own host and port may open sockets; "
            "set NOTIFIER_ALLOWED_ORIGINS to your web app's origins",
        )
    serve_workers(settings)


def cmd_dev(args: argparse.Namespace) -> None:
    base = load_settings(args.env_file, **({"port": args.port} if args.port is not None else {}))
    port = base.port
    secret = base.jwt_secret or secrets.token_urlsafe(32)
    api_key = base.api_keys[0] if base.api_keys else "dev-" + secrets.token_urlsafe(16)
    origins = {f"http://{host}:{port}" for host in ("127.0.0.1", "localhost")} | set(base.allowed_origins)
    settings = load_settings(
        args.env_file,
        port=port,
        amqp_url="memory://" if not args.amqp else base.amqp_url,
        jwt_secret=secret,
        api_keys=[api_key, *base.api_keys[1:]],
        allowed_origins=sorted(origins),
        demo_page=True,
        log_format="console",
    )
    url = f"http://{settings.host}:{port}"
    try:
        state = devstate.write(devstate.DevState(url, port, os.getpid(), secret, api_key))
    except devstate.DevStateError as error:
        fail(str(error))
    # `publish` finds the only dev server running by itself; with others running it needs to be told which.
    url_flag = f"--url {url} " if any(other.port != port for other in devstate.running()) else ""
    configure_logging(settings.log_format, settings.log_level)
    token = mint_token(secret, "demo", topics=["news.#"], ttl_s=24 * 3600)
    broker = "in-memory broker" if settings.uses_memory_broker else settings.amqp_url.split("@")[-1]
    print(
        f"""
notifier dev: http://{settings.host}:{port}  ({broker}; not for production)

  WebSocket:  ws://{settings.host}:{port}/ws
  Demo token (user "demo", may subscribe to news.#, valid 24 h):
    {token}
  Publish:    {command_name()} publish {url_flag}user.demo '{{"hello": "world"}}'
  API key:    {api_key}
""",
        flush=True,
    )
    from notifier.runtime.server import serve

    try:
        serve(settings, dev=True)
    finally:
        devstate.remove(state)


def _dev_server(settings: Settings, url: str | None) -> devstate.DevState | None:
    """The running `notifier dev` these flags and settings point at: the one on --url's port, or on
    NOTIFIER_PORT when it is set, or else the only one running."""
    if url is not None:
        parts = urllib.parse.urlsplit(url)
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            fail(f"--url {url} has no valid port")
        return devstate.find(port)
    return devstate.find(settings.port if "port" in settings.model_fields_set else None)


def _several_dev_servers() -> str:
    """The hint when the running `notifier dev` cannot be told apart: the same for `publish` and `token`."""
    running = sorted(state.port for state in devstate.running())
    return f" (notifier dev runs on ports {running}: pass --url)" if len(running) > 1 else ""


def cmd_publish(args: argparse.Namespace) -> None:
    settings = load_settings(args.env_file)
    try:
        data = json.loads(args.data)
    except ValueError as error:
        fail(f"JSON: not valid JSON ({error})")
    if args.amqp:
        asyncio.run(_publish_amqp(settings, args.topic, data, args.id))
        return
    dev = _dev_server(settings, args.url)
    url = args.url or (dev.url if dev is not None else f"http://{settings.host}:{settings.port}")
    api_key = args.api_key or (settings.api_keys[0] if settings.api_keys else dev.api_key if dev else None)
    if not api_key:
        fail(f"no API key: pass --api-key or set NOTIFIER_API_KEYS, or run `notifier dev`{_several_dev_servers()}")
    _publish_http(url, api_key, args.topic, data, args.id)


def _publish_http(url: str, api_key: str, topic: str, data: object, event_id: str | None) -> None:
    """Publish through the HTTP API with the Python client (notifier/client.py), as a backend would."""
    from notifier.client import Client, NotifierAPIError, NotifierConnectionError

    try:
        with Client(url.rstrip("/"), api_key=api_key, timeout=HTTP_TIMEOUT_S) as client:
            published = client.publish(topic, data, event_id)
    except NotifierAPIError as error:
        detail = orjson.dumps(error.body).decode() if error.body else error.message
        fail(f"HTTP {error.status}: {detail}")
    except NotifierConnectionError as error:
        fail(f"cannot reach {url}: {error.__cause__ or error}")
    # What the server answers to a publish.
    print(orjson.dumps({"id": published, "topic": topic}).decode())


async def _publish_amqp(settings: Settings, topic: str, data: object, event_id: str | None) -> None:
    """Publish straight to the exchange: the event is checked and encoded as POST /api/publish does it, and
    sent as the same persistent message the service sends."""
    import aio_pika

    from notifier.broker.event_message import event_message
    from notifier.formats.events import EVENT_ID_RE, EVENT_ID_RULE
    from notifier.formats.topics import InvalidTopic, validate_topic
    from notifier.http.errors import ApiError
    from notifier.http.routes.publish import event_from_request

    # Checked here first so that the errors name the command's arguments.
    try:
        validate_topic(topic)
    except InvalidTopic as error:
        fail(f"TOPIC: {error}")
    if event_id is not None and not EVENT_ID_RE.fullmatch(event_id):
        fail(f"--id must be {EVENT_ID_RULE}")
    request = {"topic": topic, "data": data} | ({"id": event_id} if event_id is not None else {})
    try:
        topic, body, event_id = event_from_request(request, settings.max_event_bytes)
    except ApiError as error:
        fail(error.message)
    try:
        connection = await aio_pika.connect(settings.amqp_url, timeout=settings.broker_timeout_s)
    except Exception as error:  # noqa: BLE001 - any failure to connect is reported the same way
        fail(f"cannot connect to RabbitMQ: {error!r}")
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.declare_exchange(settings.exchange, aio_pika.ExchangeType.TOPIC, durable=True)
        await exchange.publish(event_message(body, event_id), routing_key=topic)
    print(orjson.dumps({"id": event_id, "topic": topic}).decode())


def cmd_token(args: argparse.Namespace) -> None:
    settings = load_settings(args.env_file)
    dev = _dev_server(settings, args.url)
    secret = settings.jwt_secret or (dev.jwt_secret if dev is not None else None)
    if not secret:
        fail(f"no secret: set NOTIFIER_JWT_SECRET, or run `notifier dev`{_several_dev_servers()}")
    from notifier.formats.grants import validate_patterns, validate_user
    from notifier.formats.topics import InvalidTopic

    try:
        validate_user(args.user)
    except InvalidTopic as error:
        fail(f"USER: {error}")
    try:
        validate_patterns(args.topics, settings.max_token_patterns)
    except InvalidTopic as error:
        fail(f"--topics: {error}")
    print(mint_token(secret, args.user, topics=args.topics, ttl_s=args.ttl))


def package_version() -> str:
    try:
        return version("notifier")
    except PackageNotFoundError:  # run from a source tree that is not installed
        return "unknown"


def workers_argument(value: str) -> int | str:
    if value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError('a number of processes, or "auto"') from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="notifier",
        description="Push RabbitMQ events to authenticated WebSocket clients. "
        "Settings come from NOTIFIER_* environment variables (see config/notifier.env).",
    )
    env_file_help = "read NOTIFIER_* settings from this file too (the environment wins)"
    parser.add_argument("--env-file", help=env_file_help)
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the service against RabbitMQ (production)")
    serve.add_argument("--host", help="listen address (NOTIFIER_HOST)")
    serve.add_argument("--port", type=int, help="listen port (NOTIFIER_PORT)")
    serve.add_argument(
        "--workers",
        type=workers_argument,
        help='processes, each a full instance on the same port, or "auto" for one per core (NOTIFIER_WORKERS, '
        "default 1)",
    )
    serve.set_defaults(func=cmd_serve)

    dev = commands.add_parser(
        "dev", help="run locally on an embedded in-memory broker with a generated secret; prints a demo token"
    )
    dev.add_argument("--port", type=int, help="listen port (NOTIFIER_PORT, default 8000)")
    dev.add_argument("--amqp", action="store_true", help="use RabbitMQ at NOTIFIER_AMQP_URL instead")
    dev.set_defaults(func=cmd_dev)

    publish = commands.add_parser("publish", help="publish an event (through the HTTP API by default)")
    publish.add_argument("topic", metavar="TOPIC")
    publish.add_argument("data", metavar="JSON", help="the event's data, any JSON value")
    publish.add_argument("--id", help="event id (default: generated)")
    publish.add_argument(
        "--url",
        help="server URL (default: the running `notifier dev` if there is one, else http://NOTIFIER_HOST:NOTIFIER_PORT)",
    )
    publish.add_argument(
        "--api-key", help="API key (default: first of NOTIFIER_API_KEYS, or that of the `notifier dev` at the URL)"
    )
    publish.add_argument("--amqp", action="store_true", help="publish straight to RabbitMQ at NOTIFIER_AMQP_URL")
    publish.set_defaults(func=cmd_publish)

    token = commands.add_parser("token", help="mint an HS256 token with NOTIFIER_JWT_SECRET (for testing)")
    token.add_argument("user", metavar="USER")
    token.add_argument("--topics", nargs="*", default=[], metavar="PATTERN", help="grant these topic patterns")
    token.add_argument("--ttl", type=float, default=3600.0, help="lifetime in seconds (default 3600)")
    token.add_argument(
        "--url", help="the `notifier dev` whose secret signs (default: the running one, or the one on NOTIFIER_PORT)"
    )
    token.set_defaults(func=cmd_token)
    for command in (serve, dev, publish, token):
        # Also accepted after the command; SUPPRESS keeps a value given before it.
        command.add_argument("--env-file", default=argparse.SUPPRESS, help=env_file_help)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.func(args)
