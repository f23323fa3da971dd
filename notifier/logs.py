"""structlog setup: one JSON object per line in production, readable lines in dev; tokens never logged."""

from __future__ import annotations

import logging
import re
import sys
from urllib.parse import unquote

import orjson
import structlog

# uvicorn logs request paths with their query string, where `?token=` may sit, its name maybe percent-encoded
# (`?%74oken=`): every `name=value` whose decoded name is a secret's loses its value.
_SECRET_NAMES = frozenset({"token", "access_token", "api_key", "apikey", "jwt"})
_QUERY_PARAMETER = re.compile(r"(?<![^?&\s\"'])([^=&\s\"'?]{1,64})=([^&\s\"']+)")
# A JWT anywhere in a line (a stray client frame, an exception message): header.payload.signature.
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")
# Client input can reach a log line; no field of one may be longer than this (tracebacks: MAX_TRACEBACK_CHARS).
MAX_FIELD_CHARS = 1000
MAX_TRACEBACK_CHARS = 16_000


def redact(text: str) -> str:
    """`text` with JWTs and the values of secret query parameters replaced by `[redacted]`."""
    if "=" in text:
        text = _QUERY_PARAMETER.sub(_redact_parameter, text)
    if "eyJ" in text:
        text = _JWT.sub("[redacted]", text)
    return text


def _redact_parameter(match: re.Match[str]) -> str:
    name = match.group(1)
    if unquote(name).lower() in _SECRET_NAMES:
        return f"{name}=[redacted]"
    return match.group(0)


def bound_text(text: str, limit: int = MAX_FIELD_CHARS) -> str:
    """`text` redacted and cut to `limit` characters, saying how much was cut."""
    if len(text) > limit:
        text = f"{text[:limit]}... [{len(text) - limit} more characters]"
    return redact(text)


def _bound_and_redact(_: object, __: str, event_dict: structlog.typing.EventDict) -> structlog.typing.EventDict:
    """Last step before rendering: every string field bounded and redacted, whoever logged it."""
    for key, value in event_dict.items():
        if isinstance(value, str):
            event_dict[key] = bound_text(value, MAX_TRACEBACK_CHARS if key == "exception" else MAX_FIELD_CHARS)
        elif not isinstance(value, (int, float, bool)) and value is not None:
            shown = repr(value)
            if len(shown) > MAX_FIELD_CHARS or redact(shown) != shown:
                event_dict[key] = bound_text(shown)
    return event_dict


# uvicorn's own line for every WebSocket opened and closed; ours (`connection_authenticated`,
# `connection_closing`) carry the connection id and user instead, and at thousands of connections per second
# the duplicates cost real CPU.
_PER_CONNECTION_NOISE = ('"WebSocket ', "connection open", "connection closed")


class RedactSecrets(logging.Filter):
    """Masks `token=...` in any standard-library log record before it is written, and drops uvicorn's
    per-connection lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("uvicorn") and record.levelno <= logging.INFO:
            message = record.msg if isinstance(record.msg, str) else ""
            if any(part in message for part in _PER_CONNECTION_NOISE):
                return False
        if record.args:
            record.msg = record.getMessage()
            record.args = None
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        return True


def _orjson_dumps(value: object, **_: object) -> str:
    return orjson.dumps(value, default=repr).decode()


def _drop_uvicorn_colors(_: object, __: str, event_dict: structlog.typing.EventDict) -> structlog.typing.EventDict:
    event_dict.pop("color_message", None)
    return event_dict


class _StderrLogger:
    """Writes each rendered line to the current stderr. Like the standard library's handlers, and unlike
    structlog's own loggers, it never raises: a log line that cannot be written is not worth failing the
    request that logged it."""

    def __init__(self, *_: object) -> None:
        pass

    def msg(self, message: str) -> None:
        stream = sys.stderr
        try:
            stream.write(message + "\n")
            stream.flush()
        except (OSError, ValueError):  # closed, or the disk is full
            pass

    log = debug = info = warn = warning = error = critical = exception = fatal = failure = msg


def configure_logging(log_format: str, level: str) -> None:
    numeric_level = logging.getLevelName(level.upper())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer(serializer=_orjson_dumps)
        if log_format == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    finish: list[structlog.typing.Processor] = [
        structlog.processors.format_exc_info,  # a real traceback, not the repr of its objects
        _bound_and_redact,
        renderer,
    ]
    # Our own lines are rendered and written by structlog directly: through the standard library each line
    # would also build a LogRecord, walk the stack for a caller no line shows, and pass the handler's filter,
    # doubling the cost of a line logged for every connection.
    structlog.configure(
        processors=[*shared, *finish],
        logger_factory=_StderrLogger,
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactSecrets())
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *finish],
            foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder(), _drop_uvicorn_colors],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric_level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "aio_pika", "aiormq"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    # The library's own reconnect chatter is noisy at info; our broker module logs the state changes.
    logging.getLogger("aio_pika").setLevel(max(numeric_level, logging.WARNING))
    logging.getLogger("aiormq").setLevel(max(numeric_level, logging.WARNING))
