"""`POST /api/publish`: how a backend without an AMQP client publishes an event, or a batch of them."""

from __future__ import annotations

import hmac
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from notifier.broker import BrokerUnavailable, PublishNotSent
from notifier.formats.events import EVENT_ID_RE, MAX_DATA_DEPTH, new_event_id
from notifier.formats.topics import InvalidTopic, validate_topic
from notifier.http.errors import ApiError
from notifier.http.publisher import EventPublisher, OutgoingEvent
from notifier.http.routes.schemas import (
    API_KEY_SECURITY,
    PublishBatch,
    Published,
    PublishedBatch,
    PublishEvent,
    errors,
    json_body,
)
from notifier.instance.node import Node

router = APIRouter()

# The request body holds the data plus the topic, id and JSON punctuation around it.
BODY_OVERHEAD_BYTES = 1024


def check_api_key(request: Request, api_keys: list[str]) -> None:
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key:
        raise ApiError(401, "unauthorized", "send 'Authorization: Bearer <api key>'")
    # Compare against every key, in constant time, so timing reveals neither a key nor which one matched.
    matched = False
    for candidate in api_keys:
        matched |= hmac.compare_digest(key.encode(), candidate.encode())
    if not matched:
        raise ApiError(403, "forbidden", "unknown API key")


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "too_large", f"request body is over {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ApiError(413, "too_large", f"request body is over {limit} bytes")
    return bytes(body)


async def read_json_object(request: Request, limit: int) -> dict[str, Any]:
    """The request body as a JSON object of at most `limit` bytes, or the ApiError that says why not."""
    body = await read_body(request, limit)
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise ApiError(422, "bad_request", "body is not valid JSON") from None
    if not isinstance(payload, dict):
        raise ApiError(422, "bad_request", "body must be a JSON object")
    return payload


def event_from_request(payload: dict[str, Any], max_event_bytes: int) -> tuple[str, bytes, str]:
    """Check `{"topic", "data", "id"?}`; return the topic, the data as JSON and the event id."""
    unknown = set(payload) - {"topic", "data", "id"}
    if unknown:
        raise ApiError(422, "bad_request", f"unknown fields: {sorted(unknown)}")
    try:
        topic = validate_topic(payload.get("topic"))
    except InvalidTopic as error:
        raise ApiError(422, "invalid_topic", str(error)) from None
    if "data" not in payload:
        raise ApiError(422, "bad_request", "'data' is required (any JSON value)")
    event_id = payload.get("id")
    if event_id is None:
        event_id = new_event_id()
    elif not isinstance(event_id, str) or EVENT_ID_RE.fullmatch(event_id) is None:
        raise ApiError(422, "bad_request", "'id' must be 1-128 letters, digits or '_-:.@'")
    try:
        data = orjson.dumps(payload["data"])
    except (TypeError, orjson.JSONEncodeError):
        raise ApiError(422, "bad_request", f"'data' is nested more than {MAX_DATA_DEPTH} levels deep") from None
    if len(data) > max_event_bytes:
        raise ApiError(413, "too_large", f"data is over {max_event_bytes} bytes")
    return topic, data, event_id


def events_from_request(payload: dict[str, Any], max_events: int, max_event_bytes: int) -> list[OutgoingEvent]:
    """Check `{"events": [...]}`: every event valid and ids distinct, or the ApiError naming the first bad one."""
    unknown = set(payload) - {"events"}
    if unknown:
        raise ApiError(422, "bad_request", f"unknown fields: {sorted(unknown)}")
    items = payload["events"]
    if not isinstance(items, list) or not items:
        raise ApiError(422, "bad_request", "'events' must be a non-empty list of events")
    if len(items) > max_events:
        raise ApiError(422, "too_many_events", f"at most {max_events} events per request, got {len(items)}")
    events: list[OutgoingEvent] = []
    positions: dict[str, int] = {}
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise ApiError(422, "bad_request", f"events[{index}]: must be an object", index=index)
        try:
            topic, data, event_id = event_from_request(item, max_event_bytes)
        except ApiError as error:
            raise ApiError(422, error.code, f"events[{index}]: {error.message}", index=index) from None
        if event_id in positions:
            message = f"events[{index}]: id {event_id!r} repeats events[{positions[event_id]}]"
            raise ApiError(422, "duplicate_id", message, index=index)
        positions[event_id] = index
        events.append(OutgoingEvent(topic, data, event_id))
    return events


async def publish_request(request: Request, node: Node) -> JSONResponse:
    """Read, check and publish one event or a batch from a request body; 202 once the broker confirmed all."""
    settings = node.settings
    publisher: EventPublisher = request.app.state.publisher
    limit = max(settings.max_publish_body_bytes, settings.max_event_bytes + BODY_OVERHEAD_BYTES)
    payload = await read_json_object(request, limit)
    if "events" in payload:
        events = events_from_request(payload, settings.max_publish_batch, settings.max_event_bytes)
    else:
        events = [OutgoingEvent(*event_from_request(payload, settings.max_event_bytes))]
    try:
        await publisher.publish(events)
    except PublishNotSent as error:
        message = f"not sent: {error}; events of this request not sent never reached RabbitMQ; retry later"
        raise ApiError(503, "unavailable", message + " with the same ids") from None
    except BrokerUnavailable:
        message = "RabbitMQ did not confirm every event in time (some may have been published); retry with the same ids"
        raise ApiError(503, "unavailable", message) from None
    if "events" in payload:
        return JSONResponse({"ids": [event.id for event in events]}, status_code=202)
    return JSONResponse({"id": events[0].id, "topic": events[0].topic}, status_code=202)


@router.post(
    "/api/publish",
    status_code=202,
    summary="Publish one event, or a batch of events",
    response_model=Published | PublishedBatch,
    responses=errors(401, 403, 413, 422, 503),
    openapi_extra={**json_body(PublishEvent, PublishBatch), **API_KEY_SECURITY},
)
async def publish(request: Request) -> JSONResponse:
    """Publish `{"topic", "data", "id"?}` or `{"events": [...]}` through RabbitMQ; 202 means RabbitMQ has
    every event. A batch is checked whole first: one bad event answers 422 with its `index`, and none is
    published. An `id` this instance published within NOTIFIER_PUBLISH_DEDUPE_WINDOW_S is not published again."""
    node = request.app.state.node
    try:
        response = await publish_event(request, node)
    except ApiError as error:
        node.stats.publish_results[error.status] += 1
        raise
    node.stats.publish_results[response.status_code] += 1
    return response


async def publish_event(request: Request, node: Node) -> JSONResponse:
    check_api_key(request, node.settings.api_keys)
    return await publish_request(request, node)
