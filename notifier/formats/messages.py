"""The protocol's JSON messages: parsing what a client sends, encoding what the server sends.

Words used across the code: a *message* is one JSON object of the protocol (this module); a *frame* is the
WebSocket frame that carries it (notifier/formats/wire.py builds a server message's frame once for every receiver).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import orjson

from notifier.formats.events import Event

MAX_ID_LENGTH = 64
MAX_SESSION_ID_LENGTH = 128

RequestId = str | int | None


class BadMessage(Exception):
    """A client message that cannot be used; `code` is the error frame's code."""

    def __init__(self, code: str, message: str, request_id: RequestId = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id


@dataclass(frozen=True)
class Resume:
    """The session a reconnecting client had, and how many of its event frames it received."""

    session: str
    received: int


@dataclass(frozen=True)
class Auth:
    """`token` is None when the frame has none (or `null`): the client asks to be signed in by the application
    (the connect proxy, docs/protocol.md#proxies)."""

    token: str | None
    id: RequestId = None
    resume: Resume | None = None


@dataclass(frozen=True)
class Refresh:
    token: str
    id: RequestId = None


@dataclass(frozen=True)
class Subscribe:
    topic: str
    id: RequestId = None


@dataclass(frozen=True)
class Unsubscribe:
    topic: str
    id: RequestId = None


@dataclass(frozen=True)
class Ping:
    id: RequestId = None


ClientMessage = Auth | Refresh | Subscribe | Unsubscribe | Ping


def _request_id(raw: dict[str, Any]) -> RequestId:
    value = raw.get("id")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise BadMessage("bad_request", "id must be a string or an integer")
    if isinstance(value, str) and len(value) > MAX_ID_LENGTH:
        raise BadMessage("bad_request", f"id must be at most {MAX_ID_LENGTH} characters")
    if isinstance(value, int) and not -(2**53) < value < 2**53:
        raise BadMessage("bad_request", "id must be a safe integer")
    return value


def _string_field(raw: dict[str, Any], name: str, request_id: RequestId) -> str:
    value = raw.get(name)
    if not isinstance(value, str):
        raise BadMessage("bad_request", f"'{name}' must be a string", request_id)
    return value


def _resume_field(raw: dict[str, Any], request_id: RequestId) -> Resume | None:
    value = raw.get("resume")
    if value is None:
        return None
    if not isinstance(value, dict):
        raise BadMessage("bad_request", "'resume' must be an object", request_id)
    session = value.get("session")
    received = value.get("received")
    if not isinstance(session, str) or not 0 < len(session) <= MAX_SESSION_ID_LENGTH:
        raise BadMessage("bad_request", f"'resume.session' must be a string of 1-{MAX_SESSION_ID_LENGTH}", request_id)
    if isinstance(received, bool) or not isinstance(received, int) or not 0 <= received < 2**53:
        raise BadMessage("bad_request", "'resume.received' must be a count of events (an integer >= 0)", request_id)
    return Resume(session, received)


def parse_client_message(text: str) -> ClientMessage:
    """Parse one client text frame, or raise BadMessage with the error code to answer."""
    try:
        raw = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise BadMessage("bad_request", "frame is not valid JSON") from None
    if not isinstance(raw, dict):
        raise BadMessage("bad_request", "frame must be a JSON object")
    request_id = _request_id(raw)
    kind = raw.get("type")
    if kind == "subscribe":
        return Subscribe(_string_field(raw, "topic", request_id), request_id)
    if kind == "unsubscribe":
        return Unsubscribe(_string_field(raw, "topic", request_id), request_id)
    if kind == "ping":
        return Ping(request_id)
    if kind == "auth":
        token = None if raw.get("token") is None else _string_field(raw, "token", request_id)
        return Auth(token, request_id, _resume_field(raw, request_id))
    if kind == "refresh":
        return Refresh(_string_field(raw, "token", request_id), request_id)
    if not isinstance(kind, str):
        raise BadMessage("bad_request", "frame needs a string 'type'", request_id)
    raise BadMessage("unknown_type", f"unknown frame type {kind[:40]!r}", request_id)


def _encode(frame: dict[str, Any]) -> bytes:
    return orjson.dumps(frame)


def welcome(
    user: str,
    topics: list[str],
    expires_at: float,
    session: str,
    *,
    recovered: bool = False,
    dropped: list[str] | None = None,
) -> bytes:
    frame: dict[str, Any] = {
        "type": "welcome",
        "user": user,
        "topics": topics,
        "expires": int(expires_at),
        "session": session,
        "recovered": recovered,
    }
    if dropped is not None:
        frame["dropped"] = dropped
    return _encode(frame)


def refreshed(request_id: RequestId, expires_at: float, dropped: list[str]) -> bytes:
    return _encode({"type": "refreshed", "id": request_id, "expires": int(expires_at), "dropped": dropped})


def subscription(kind: Literal["subscribed", "unsubscribed"], topic: str, request_id: RequestId) -> bytes:
    return _encode({"type": kind, "topic": topic, "id": request_id})


def unsubscribed_by_server(topic: str) -> bytes:
    """The server API took the topic from this connection (no request of the client's, so `id` is null)."""
    return _encode({"type": "unsubscribed", "topic": topic, "id": None, "reason": "server"})


def resync(reason: str) -> bytes:
    """Events of this connection's topics may have been lost (its instance's routing was rebuilt after a broker
    node was lost): the client should fetch its state anew. Subscriptions stay as they are."""
    return _encode({"type": "resync", "reason": reason})


def pong(request_id: RequestId) -> bytes:
    return _encode({"type": "pong", "id": request_id})


def error(code: str, message: str, request_id: RequestId = None, topic: str | None = None) -> bytes:
    frame: dict[str, Any] = {"type": "error", "id": request_id, "code": code, "message": message}
    if topic is not None:
        frame["topic"] = topic
    return _encode(frame)


def event(item: Event) -> bytes:
    """Encode an event once; the same bytes go to every subscriber.

    The event's data is already validated JSON, so it is spliced in as-is rather than parsed and dumped again.
    """
    head = orjson.dumps({"type": "event", "topic": item.topic, "id": item.id, "ts": item.ts_ms})
    return head[:-1] + b',"data":' + item.data + b"}"
