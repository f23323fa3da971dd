"""Commands and replies between instances as they travel: a command's body is JSON `{"kind": ..., "args":
{...}}` and its message id the command id; a reply's body is a JSON object or `null`. Anything that cannot be
used raises BadControlMessage, and the control plane logs and drops it."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import orjson

CommandArgs = dict[str, Any]
CommandResult = dict[str, Any] | None

MAX_COMMAND_BYTES = 64 * 1024
MAX_KIND_LENGTH = 64
MAX_ID_LENGTH = 128


class BadControlMessage(Exception):
    """A control message that cannot be used; it is logged and dropped."""


@dataclass(frozen=True)
class Command:
    """One command: its id (a repeated id runs once), what to do and with what."""

    id: str
    kind: str
    args: CommandArgs


@dataclass(frozen=True)
class Gathered:
    """The replies to a command sent to every instance: one per instance that answered in time."""

    replies: dict[str, CommandResult]  # instance id -> its reply
    expected: int  # instances known to be alive when the command was sent

    @property
    def instances(self) -> int:
        return len(self.replies)


def new_command_id() -> str:
    """A fresh command id."""
    return uuid.uuid4().hex


def encode_command(kind: str, args: CommandArgs) -> bytes:
    """A command's body."""
    return orjson.dumps({"kind": kind, "args": args})


def parse_command(command_id: object, body: bytes, max_bytes: int = MAX_COMMAND_BYTES) -> Command:
    """Check a command message of at most `max_bytes`, or raise BadControlMessage saying why."""
    if not isinstance(command_id, str) or not 0 < len(command_id) <= MAX_ID_LENGTH:
        raise BadControlMessage("command has no usable id")
    if len(body) > max_bytes:
        raise BadControlMessage(f"command is {len(body)} bytes, over {max_bytes}")
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise BadControlMessage("command body is not JSON") from None
    if not isinstance(payload, dict):
        raise BadControlMessage("command body is not a JSON object")
    kind, args = payload.get("kind"), payload.get("args", {})
    if not isinstance(kind, str) or not 0 < len(kind) <= MAX_KIND_LENGTH:
        raise BadControlMessage("command has no usable 'kind'")
    if not isinstance(args, dict):
        raise BadControlMessage("command 'args' is not an object")
    return Command(command_id, kind, args)


def encode_reply(result: CommandResult) -> bytes:
    """A reply's body."""
    return orjson.dumps(result)


def parse_reply(body: bytes) -> CommandResult:
    """Check a reply's body, or raise BadControlMessage saying why."""
    try:
        result = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise BadControlMessage("reply body is not JSON") from None
    if result is not None and not isinstance(result, dict):
        raise BadControlMessage("reply body is not a JSON object")
    return result
