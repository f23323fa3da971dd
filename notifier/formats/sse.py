"""The HTTP stream's wire format (`GET /sse`, docs/protocol.md "Browser side (HTTP stream)"): each server message
of the WebSocket protocol as one server-sent-events message, the heartbeat comment, the `close` message that ends
a stream, the resume point a client gives as `Last-Event-ID`, and what a refused stream is answered.

Pure: bytes in, bytes out.
"""

from __future__ import annotations

from typing import Final

import orjson

from notifier.formats.closecodes import CloseReason
from notifier.formats.messages import MAX_SESSION_ID_LENGTH, Resume

CONTENT_TYPE: Final = "text/event-stream; charset=utf-8"
HEARTBEAT: Final = b": heartbeat\n\n"
# The longest count a resume point may give: a count of events below 2^53 has at most 16 digits.
_MAX_COUNT_DIGITS = 16


def message(data: bytes, event_id: str | None = None) -> bytes:
    """One SSE message: an optional `id:` line and the message's JSON on one `data:` line.

    The server's own messages are compact JSON, but an event's data is spliced in as it was published, and a
    message published straight to RabbitMQ may hold line breaks. In valid JSON a raw CR or LF can only be
    whitespace between tokens (inside strings they are escaped), so each becomes a space: the same JSON value, on
    one line."""
    if b"\n" in data or b"\r" in data:
        data = data.replace(b"\r", b" ").replace(b"\n", b" ")
    if event_id is None:
        return b"data: " + data + b"\n\n"
    return b"id: " + event_id.encode() + b"\ndata: " + data + b"\n\n"


def event_id(session: str, count: int) -> str:
    """The `id:` of a message: the session and the count of events its client has once it has this message."""
    return f"{session}:{count}"


def welcome_for_stream(welcome: bytes, stream: str, heartbeat_s: int) -> bytes:
    """The `welcome` message with the two fields of this transport: the stream's key and the heartbeat period."""
    extra = b',"stream":' + orjson.dumps(stream) + b',"heartbeat":' + str(int(heartbeat_s)).encode()
    return welcome[:-1] + extra + b"}"


def close(reason: CloseReason) -> bytes:
    """The last message of a stream: the close code and reason a WebSocket would have closed with."""
    return message(orjson.dumps({"type": "close", "code": reason.code, "reason": reason.reason}))


class BadResumePoint(ValueError):
    """A `Last-Event-ID` (or `last_event_id`) that is not `<session>:<received>`."""


def parse_resume_point(value: str) -> Resume:
    """`<session>:<received>`, as the `id:` of the last message a client had, read as a resume: the session id
    (1 to 128 printable ASCII characters) and the count of events received (decimal digits, below 2^53).
    Anything else raises BadResumePoint, an empty value included."""
    session, separator, count = value.rpartition(":")
    if not separator or not session:
        raise BadResumePoint("expected '<session>:<received>'")
    if len(session) > MAX_SESSION_ID_LENGTH or not all(" " < character <= "~" for character in session):
        raise BadResumePoint(f"the session must be 1-{MAX_SESSION_ID_LENGTH} printable ASCII characters")
    if not count.isascii() or not count.isdigit() or len(count) > _MAX_COUNT_DIGITS or int(count) >= 2**53:
        raise BadResumePoint("the count of events received must be a whole number below 2^53")
    return Resume(session, int(count))


# A stream refused before its first message is answered in HTTP: the status, `error` and message of each close
# code a session can end with before its welcome (docs/protocol.md).
REFUSALS: Final[dict[int, tuple[int, str, str]]] = {
    4500: (401, "invalid_token", "the token is not valid (signature, algorithm, claims or lifetime)"),
    4001: (401, "token_expired", "the token has expired: get a new one"),
    4501: (401, "token_missing", "no token: send 'Authorization: Bearer <jwt>' or ?token=<jwt>"),
    4504: (403, "refused_by_application", "the application refused to sign this client in"),
    4502: (429, "too_many_user_connections", "this user has NOTIFIER_MAX_CONNECTIONS_PER_USER connections here"),
    4004: (429, "rate_limited", "this user signed in or subscribed too often: retry later"),
    4003: (503, "instance_full", "this instance has NOTIFIER_MAX_CONNECTIONS connections: retry later"),
    1013: (503, "unavailable", "RabbitMQ did not route this user's topic in time: retry later"),
    4005: (503, "application_unavailable", "the application could not say who this client is: retry later"),
    1012: (503, "restarting", "this instance is shutting down: retry, another one will answer"),
}
# What a client waits before it tries a retryable refusal again (the `Retry-After` header).
RETRY_AFTER_S: Final = 1


def refusal(reason: CloseReason) -> tuple[int, dict[str, object], bool]:
    """The HTTP status, JSON body and whether to send `Retry-After` for a stream closed with `reason` before
    its welcome. A code without its own row is 503 `unavailable` if a client may retry it, else 400
    `bad_request`; every code below 4500 is retryable."""
    retry = reason.code < 4500
    status, error, message = REFUSALS.get(reason.code) or (
        (503, "unavailable", reason.reason) if retry else (400, "bad_request", reason.reason)
    )
    return status, {"error": error, "code": reason.code, "message": message}, retry
