"""`POST /api/disconnect`, `POST /api/unsubscribe`, `GET /api/presence`: a backend acts on a user's
connections on every instance, through the control plane."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from notifier.broker import BrokerUnavailable
from notifier.cluster.control import ControlPlane
from notifier.formats.events import EVENT_ID_RE
from notifier.http import commands
from notifier.http.errors import ApiError
from notifier.http.routes.publish import check_api_key, read_json_object
from notifier.http.routes.schemas import (
    API_KEY_SECURITY,
    CommandAccepted,
    DisconnectRequest,
    Presence,
    UnsubscribeRequest,
    errors,
    json_body,
)

router = APIRouter()

MAX_COMMAND_BODY_BYTES = 4096


def _control(request: Request) -> ControlPlane:
    check_api_key(request, request.app.state.node.settings.api_keys)
    control: ControlPlane = request.app.state.control
    return control


async def _command_body(request: Request, fields: set[str]) -> dict[str, Any]:
    payload = await read_json_object(request, MAX_COMMAND_BODY_BYTES)
    unknown = set(payload) - fields - {"id"}
    if unknown:
        raise ApiError(422, "bad_request", f"unknown fields: {sorted(unknown)}")
    return payload


def _user(value: object) -> str:
    try:
        return commands.check_user(value)
    except ValueError as error:
        raise ApiError(422, "invalid_user", str(error)) from None


def _command_id(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or EVENT_ID_RE.fullmatch(value) is None:
        raise ApiError(422, "bad_request", "'id' must be 1-128 letters, digits or '_-:.@'")
    return value


async def _broadcast(control: ControlPlane, kind: str, args: dict[str, Any], command_id: str | None) -> str:
    try:
        return await control.broadcast(kind, args, command_id=command_id)
    except BrokerUnavailable:
        raise ApiError(503, "unavailable", "the command was not confirmed by the broker; retry") from None


@router.post(
    "/api/disconnect",
    status_code=202,
    summary="Close every connection of a user, on every instance",
    response_model=CommandAccepted,
    responses=errors(401, 403, 413, 422, 503),
    openapi_extra={**json_body(DisconnectRequest), **API_KEY_SECURITY},
)
async def disconnect(request: Request) -> JSONResponse:
    """Every open connection of `user`, on every instance, is closed with 4503 (terminal: clients do not
    reconnect by themselves). 202 once RabbitMQ confirmed the command; the connections close within moments."""
    control = _control(request)
    payload = await _command_body(request, {"user", "reason"})
    user = _user(payload.get("user"))
    try:
        reason = commands.check_reason(payload.get("reason"))
    except ValueError as error:
        raise ApiError(422, "bad_request", str(error)) from None
    args = {"user": user, "reason": reason}
    command_id = await _broadcast(control, commands.DISCONNECT, args, _command_id(payload.get("id")))
    return JSONResponse({"user": user, "command": command_id}, status_code=202)


@router.post(
    "/api/unsubscribe",
    status_code=202,
    summary="Take a topic from every connection of a user, on every instance",
    response_model=CommandAccepted,
    responses=errors(401, 403, 413, 422, 503),
    openapi_extra={**json_body(UnsubscribeRequest), **API_KEY_SECURITY},
)
async def unsubscribe(request: Request) -> JSONResponse:
    """Every connection of `user` holding `topic` receives `{"type": "unsubscribed", "topic", "id": null,
    "reason": "server"}` and no further event of the topic. 202 once RabbitMQ confirmed the command."""
    control = _control(request)
    payload = await _command_body(request, {"user", "topic"})
    user = _user(payload.get("user"))
    try:
        topic = commands.check_topic(payload.get("topic"))
    except ValueError as error:
        raise ApiError(422, "invalid_topic", str(error)) from None
    args = {"user": user, "topic": topic}
    command_id = await _broadcast(control, commands.UNSUBSCRIBE, args, _command_id(payload.get("id")))
    return JSONResponse({"user": user, "command": command_id}, status_code=202)


@router.get(
    "/api/presence",
    summary="Whether a user is connected, counted over every instance",
    response_model=Presence,
    responses=errors(401, 403, 422, 503),
    openapi_extra={
        "parameters": [
            {
                "name": "user",
                "in": "query",
                "required": True,
                "description": "the user id (the token's `sub`)",
                "schema": {"type": "string"},
            }
        ],
        **API_KEY_SECURITY,
    },
)
async def presence(request: Request) -> JSONResponse:
    """Asks every live instance how many open connections `user` has there, and waits at most
    NOTIFIER_CONTROL_REPLY_TIMEOUT_S: an instance that does not answer in time counts as holding none, and
    `instances` says how many answered."""
    control = _control(request)
    unknown = set(request.query_params) - {"user"}
    if unknown:
        raise ApiError(422, "bad_request", f"unknown parameters: {sorted(unknown)}")
    user = _user(request.query_params.get("user"))
    timeout = request.app.state.node.settings.control_reply_timeout_s
    try:
        gathered = await control.gather(commands.PRESENCE, {"user": user}, timeout=timeout)
    except BrokerUnavailable:
        raise ApiError(503, "unavailable", "the control plane is not connected to the broker; retry") from None
    connections = 0
    for reply in gathered.replies.values():
        count = reply.get("connections") if reply else None
        if isinstance(count, int) and count > 0:
            connections += count
    body = {"user": user, "online": connections > 0, "connections": connections, "instances": gathered.instances}
    return JSONResponse(body)
