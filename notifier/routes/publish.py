"""`POST /api/publish`: how a backend without an AMQP client publishes an event."""

from __future__ import annotations

import hmac
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from notifier.broker import BrokerUnavailable
from notifier.errors import ApiError
from notifier.events import EVENT_ID_RE, new_event_id
from notifier.node import Node
from notifier.topics import InvalidTopic, validate_topic

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
    data = orjson.dumps(payload["data"])
    if len(data) > max_event_bytes:
        raise ApiError(413, "too_large", f"data is over {max_event_bytes} bytes")
    return topic, data, event_id


async def publish_request(request: Request, node: Node) -> JSONResponse:
    """Read, check and publish one event from a request body; 202 once the broker confirmed it."""
    max_event_bytes = node.settings.max_event_bytes
    payload = await read_json_object(request, max_event_bytes + BODY_OVERHEAD_BYTES)
    topic, data, event_id = event_from_request(payload, max_event_bytes)
    try:
        await node.broker.publish(topic, data, event_id)
    except BrokerUnavailable:
        raise ApiError(503, "unavailable", "the broker did not confirm the event; retry") from None
    return JSONResponse({"id": event_id, "topic": topic}, status_code=202)


@router.post("/api/publish", status_code=202)
async def publish(request: Request) -> JSONResponse:
    """Publish `{"topic", "data", "id"?}` through the broker; 202 means the broker has the event."""
    node = request.app.state.node
    try:
        response = await publish_event(request, node)
    except ApiError as error:
        node.publish_results[error.status] += 1
        raise
    node.publish_results[response.status_code] += 1
    return response


async def publish_event(request: Request, node: Node) -> JSONResponse:
    check_api_key(request, node.settings.api_keys)
    return await publish_request(request, node)
