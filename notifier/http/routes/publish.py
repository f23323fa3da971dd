"""`POST /api/publish`: how a backend without an AMQP client publishes an event, or a batch of them."""

from __future__ import annotations

import hmac
from functools import partial
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from notifier.broker import BrokerUnavailable, PublishNotSent
from notifier.formats import publish_body
from notifier.formats.publish_body import BadPublishBody
from notifier.http.bodies import RequestBodies
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
from notifier.settings import Settings

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


def api_error(bad: BadPublishBody) -> ApiError:
    if bad.index is None:
        return ApiError(bad.status, bad.code, bad.message)
    return ApiError(bad.status, bad.code, bad.message, index=bad.index)


async def read_json_object(request: Request, limit: int) -> dict[str, Any]:
    """The request body as a JSON object of at most `limit` bytes, or the ApiError that says why not; read
    within the bounds on bodies in flight (notifier/http/bodies.py)."""
    bodies: RequestBodies = request.app.state.bodies
    async with bodies.read(request, limit) as body:
        try:
            return await bodies.parse(body, publish_body.json_object)
        except BadPublishBody as bad:
            raise api_error(bad) from None


def event_from_request(payload: dict[str, Any], max_event_bytes: int) -> tuple[str, bytes, str]:
    """Check `{"topic", "data", "id"?}`; return the topic, the data as JSON and the event id
    (notifier/formats/publish_body.py), or the ApiError that says why not."""
    try:
        return publish_body.checked_event(payload, max_event_bytes)
    except BadPublishBody as bad:
        raise api_error(bad) from None


def events_from_request(payload: dict[str, Any], max_events: int, max_event_bytes: int) -> list[OutgoingEvent]:
    """Check `{"events": [...]}`: every event valid and ids distinct, or the ApiError naming the first bad one."""
    try:
        return [OutgoingEvent(*event) for event in publish_body.checked_batch(payload, max_events, max_event_bytes)]
    except BadPublishBody as bad:
        raise api_error(bad) from None


def publish_body_limit(settings: Settings) -> int:
    """The largest publish body taken: a batch's, or one event of the largest size with its envelope."""
    return max(settings.max_publish_body_bytes, settings.max_event_bytes + BODY_OVERHEAD_BYTES)


async def publish_request(request: Request, node: Node) -> JSONResponse:
    """Read, check and publish one event or a batch from a request body; 202 once the broker confirmed all."""
    settings = node.settings
    publisher: EventPublisher = request.app.state.publisher
    bodies: RequestBodies = request.app.state.bodies
    parse = partial(
        publish_body.parse_publish_body, max_events=settings.max_publish_batch, max_event_bytes=settings.max_event_bytes
    )
    async with bodies.read(request, publish_body_limit(settings)) as body:
        try:
            checked, batch = await bodies.parse(body, parse)
        except BadPublishBody as bad:
            raise api_error(bad) from None
    events = [OutgoingEvent(*event) for event in checked]
    try:
        await publisher.publish(events)
    except PublishNotSent as error:
        message = f"not sent: {error}; events of this request not sent never reached RabbitMQ; retry later"
        raise ApiError(503, "unavailable", message + " with the same ids") from None
    except BrokerUnavailable:
        message = "RabbitMQ did not confirm every event in time (some may have been published); retry with the same ids"
        raise ApiError(503, "unavailable", message) from None
    if batch:
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
