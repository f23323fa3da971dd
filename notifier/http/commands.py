"""The server API's commands to every instance, and what an instance does with them to its own connections:
close a user's connections, take a topic from them, count them."""

from __future__ import annotations

import unicodedata
from typing import TYPE_CHECKING, Any

from notifier.cluster.codec import BadControlMessage, CommandArgs
from notifier.cluster.control import ControlPlane
from notifier.formats import closecodes
from notifier.formats.closecodes import CloseReason
from notifier.formats.grants import validate_user
from notifier.formats.topics import InvalidTopic, validate_topic

if TYPE_CHECKING:
    from notifier.instance.node import Node

DISCONNECT = "disconnect"
UNSUBSCRIBE = "unsubscribe"
PRESENCE = "presence"

# A WebSocket close reason is at most 123 bytes; ours stay well under it.
MAX_REASON_BYTES = 100


def check_user(value: object) -> str:
    """A user id as tokens carry it in `sub` (the same rule: notifier/grants.py)."""
    try:
        return validate_user(value)
    except InvalidTopic as error:
        raise ValueError(f"'user': {error}") from None


def check_reason(value: object) -> str | None:
    """A close reason: printable text of at most MAX_REASON_BYTES. Control characters (CR, LF, NUL, any of
    Unicode's category Cc) are refused, not stripped, so a backend learns its reason would not arrive as sent."""
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value.encode()) > MAX_REASON_BYTES:
        raise ValueError(f"'reason' must be a non-empty string of at most {MAX_REASON_BYTES} bytes")
    if any(unicodedata.category(character) == "Cc" for character in value):
        raise ValueError("'reason' must not contain control characters (CR, LF, NUL, tab...)")
    return value


def check_topic(value: object) -> str:
    try:
        return validate_topic(value)
    except InvalidTopic as error:
        raise ValueError(str(error)) from None


def _checked(check: Any, args: CommandArgs, name: str) -> Any:
    try:
        return check(args.get(name))
    except ValueError as error:
        raise BadControlMessage(str(error)) from None


def install(control: ControlPlane, node: Node) -> None:
    """Let `control` run the server API's commands on `node`'s connections."""

    async def disconnect(args: CommandArgs) -> dict[str, Any]:
        user = _checked(check_user, args, "user")
        reason = _checked(check_reason, args, "reason")
        close = CloseReason(closecodes.DISCONNECTED.code, reason) if reason else closecodes.DISCONNECTED
        sessions = node.sessions_of(user)
        for session in sessions:
            session.close(close)
        # A parked session could otherwise be resumed by a client that still holds a token.
        parked = node.parked_sessions_of(user)
        for session in parked:
            node.directory.end(session)
        return {"closed": len(sessions), "parked_ended": len(parked)}

    async def unsubscribe(args: CommandArgs) -> dict[str, Any]:
        user = _checked(check_user, args, "user")
        topic = _checked(check_topic, args, "topic")
        # A parked session holding the topic ends: it has no socket to be told on, and a resume would bring
        # the topic back unannounced. Its client reconnects as a fresh session.
        parked = [session for session in node.parked_sessions_of(user) if topic in session.topics]
        for session in parked:
            node.directory.end(session)
        dropped = 0
        for session in node.sessions_of(user):
            dropped += await session.drop_topic_by_server(topic)
        return {"unsubscribed": dropped, "parked_ended": len(parked)}

    async def presence(args: CommandArgs) -> dict[str, Any]:
        user = _checked(check_user, args, "user")
        return {"connections": len(node.sessions_of(user))}

    control.on(DISCONNECT, disconnect)
    control.on(UNSUBSCRIBE, unsubscribe)
    control.on(PRESENCE, presence)
