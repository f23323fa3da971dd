"""The body of `POST /api/publish` (one event, or a batch of them) checked and turned into events: topic, data
as compact JSON, id. Pure: errors are `BadPublishBody` with the HTTP status and code to answer with.

A large body is parsed in a process of its own (notifier/http/bodies.py): `python -m
notifier.formats.publish_body` imports only this module and what it imports, so it starts small, and serves
parses one after the other over its stdin and stdout (`serve_parses`)."""

from __future__ import annotations

import contextlib
import os
import pickle
import sys
from typing import IO, Any

import orjson

from notifier.formats.events import EVENT_ID_RE, MAX_DATA_DEPTH, new_event_id
from notifier.formats.topics import InvalidTopic, validate_topic

# The parse process's niceness: on a busy machine the serving process's event loop gets the CPU first.
PARSE_NICENESS = 10

PublishedEvent = tuple[str, bytes, str]
"""An event checked: its topic, its data as compact JSON, its id."""


class BadPublishBody(Exception):
    """What is wrong with a publish body, and the HTTP answer for it (pickled whole across processes)."""

    def __init__(self, status: int, code: str, message: str, index: int | None = None) -> None:
        super().__init__(status, code, message, index)
        self.status = status
        self.code = code
        self.message = message
        self.index = index


def json_object(body: bytes) -> dict[str, Any]:
    """`body` as a JSON object, or BadPublishBody saying why not."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise BadPublishBody(422, "bad_request", "body is not valid JSON") from None
    if not isinstance(payload, dict):
        raise BadPublishBody(422, "bad_request", "body must be a JSON object")
    return payload


def checked_event(payload: dict[str, Any], max_event_bytes: int) -> PublishedEvent:
    """Check `{"topic", "data", "id"?}`; return the topic, the data as JSON and the event id."""
    unknown = set(payload) - {"topic", "data", "id"}
    if unknown:
        raise BadPublishBody(422, "bad_request", f"unknown fields: {sorted(unknown)}")
    try:
        topic = validate_topic(payload.get("topic"))
    except InvalidTopic as error:
        raise BadPublishBody(422, "invalid_topic", str(error)) from None
    if "data" not in payload:
        raise BadPublishBody(422, "bad_request", "'data' is required (any JSON value)")
    event_id = payload.get("id")
    if event_id is None:
        event_id = new_event_id()
    elif not isinstance(event_id, str) or EVENT_ID_RE.fullmatch(event_id) is None:
        raise BadPublishBody(422, "bad_request", "'id' must be 1-128 letters, digits or '_-:.@'")
    try:
        data = orjson.dumps(payload["data"])
    except (TypeError, orjson.JSONEncodeError):
        raise BadPublishBody(422, "bad_request", f"'data' is nested more than {MAX_DATA_DEPTH} levels deep") from None
    if len(data) > max_event_bytes:
        raise BadPublishBody(413, "too_large", f"data is over {max_event_bytes} bytes")
    return topic, data, event_id


def checked_batch(payload: dict[str, Any], max_events: int, max_event_bytes: int) -> list[PublishedEvent]:
    """Check `{"events": [...]}`: every event valid and ids distinct, or BadPublishBody naming the first bad one.
    Takes the events out of `payload` as it goes, so each one's objects are freed once its data is encoded (a
    batch's objects are never all freed in one go)."""
    unknown = set(payload) - {"events"}
    if unknown:
        raise BadPublishBody(422, "bad_request", f"unknown fields: {sorted(unknown)}")
    items = payload["events"]
    if not isinstance(items, list) or not items:
        raise BadPublishBody(422, "bad_request", "'events' must be a non-empty list of events")
    if len(items) > max_events:
        raise BadPublishBody(422, "too_many_events", f"at most {max_events} events per request, got {len(items)}")
    events: list[PublishedEvent] = []
    positions: dict[str, int] = {}
    try:
        for index in range(len(items)):
            item, items[index] = items[index], None
            events.append(_batch_event(item, index, positions, max_event_bytes))
            del item
    finally:
        while items:
            items.pop()  # one event's objects at a time
    return events


def _batch_event(item: object, index: int, positions: dict[str, int], max_event_bytes: int) -> PublishedEvent:
    if not isinstance(item, dict):
        raise BadPublishBody(422, "bad_request", f"events[{index}]: must be an object", index)
    try:
        topic, data, event_id = checked_event(item, max_event_bytes)
    except BadPublishBody as error:
        raise BadPublishBody(422, error.code, f"events[{index}]: {error.message}", index) from None
    if event_id in positions:
        message = f"events[{index}]: id {event_id!r} repeats events[{positions[event_id]}]"
        raise BadPublishBody(422, "duplicate_id", message, index)
    positions[event_id] = index
    return topic, data, event_id


def parse_publish_body(body: bytes, max_events: int, max_event_bytes: int) -> tuple[list[PublishedEvent], bool]:
    """The events of a publish body, checked, and whether it was a batch; or BadPublishBody saying why not.
    Returns bytes and strings only, and frees what it parsed as it goes."""
    payload = json_object(body)
    if "events" in payload:
        return checked_batch(payload, max_events, max_event_bytes), True
    return [checked_event(payload, max_event_bytes)], False


def read_frame(stream: IO[bytes]) -> bytes | None:
    """One length-prefixed frame of the parse process's pipe, or None at its end."""
    head = stream.read(8)
    if len(head) < 8:
        return None
    size = int.from_bytes(head, "big")
    frame = stream.read(size)
    return frame if len(frame) == size else None


def frame(payload: bytes) -> bytes:
    return len(payload).to_bytes(8, "big") + payload


def serve_parses(requests: IO[bytes], answers: IO[bytes]) -> None:
    """The parse process: each request is a pickled `(parse, body)` from the serving process (its parent, over a
    private pipe); the answer is the pickled `("ok", parse(body))` or `("error", exception)`. Ends when the
    parent closes the pipe, or is gone. Runs at a lower CPU priority: parsing is background work next to the
    serving process's event loop."""
    with contextlib.suppress(OSError):
        os.nice(PARSE_NICENESS)
    while (request := read_frame(requests)) is not None:
        parse, body = pickle.loads(request)  # written by the parent process only, over a private pipe
        del request
        try:
            answer = pickle.dumps(("ok", parse(body)), protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as error:  # noqa: BLE001 - every failure goes back to the request that caused it
            answer = pickle.dumps(("error", error), protocol=pickle.HIGHEST_PROTOCOL)
        del body
        answers.write(frame(answer))
        answers.flush()


if __name__ == "__main__":
    serve_parses(sys.stdin.buffer, sys.stdout.buffer)
