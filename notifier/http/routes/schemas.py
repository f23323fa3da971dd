"""The shapes of the HTTP API's bodies, for /openapi.json. The routes check bodies themselves (so that every
mistake gets its own error code, after the API key is checked); these models describe the same rules."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

EVENT_ID_PATTERN = r"^[A-Za-z0-9_\-:.@]{1,128}$"
USER_PATTERN = r"^[A-Za-z0-9_\-:@]{1,255}$"


class PublishEvent(BaseModel):
    topic: str = Field(description="the topic (routing key); no wildcards", examples=["user.42"])
    data: Any = Field(description="any JSON value, at most NOTIFIER_MAX_EVENT_BYTES as JSON")
    id: str | None = Field(
        default=None,
        pattern=EVENT_ID_PATTERN,
        description="event id; generated when missing. An id this instance published within "
        "NOTIFIER_PUBLISH_DEDUPE_WINDOW_S is not published again",
    )


class PublishBatch(BaseModel):
    events: list[PublishEvent] = Field(
        min_length=1, description="at most NOTIFIER_MAX_PUBLISH_BATCH events; all are published or none"
    )


class Published(BaseModel):
    id: str
    topic: str


class PublishedBatch(BaseModel):
    ids: list[str] = Field(description="the event ids, in the order of the request")


class DisconnectRequest(BaseModel):
    user: str = Field(pattern=USER_PATTERN, description="the user id (the token's `sub`)")
    reason: str | None = Field(
        default=None, description="close reason sent to the clients (at most 100 bytes of UTF-8)"
    )
    id: str | None = Field(default=None, pattern=EVENT_ID_PATTERN, description="command id; a repeat runs once")


class UnsubscribeRequest(BaseModel):
    user: str = Field(pattern=USER_PATTERN, description="the user id (the token's `sub`)")
    topic: str = Field(description="the topic to take from every connection of the user", examples=["news.sport"])
    id: str | None = Field(default=None, pattern=EVENT_ID_PATTERN, description="command id; a repeat runs once")


class CommandAccepted(BaseModel):
    user: str
    command: str = Field(description="the command id")


class Presence(BaseModel):
    user: str
    online: bool = Field(description="true if any instance that answered holds a connection of the user")
    connections: int = Field(description="open, authenticated connections of the user, summed over instances")
    instances: int = Field(description="how many instances answered within NOTIFIER_CONTROL_REPLY_TIMEOUT_S")


class ErrorBody(BaseModel):
    error: str = Field(description="machine-readable code, e.g. bad_request, invalid_topic, unauthorized")
    message: str
    index: int | None = Field(default=None, description="in a batch: the position of the event that was refused")


def _inline(schema: Any, definitions: dict[str, Any]) -> Any:
    """Replace `$ref`s into `$defs` with the definitions themselves (the models here are not recursive)."""
    if isinstance(schema, dict):
        ref = schema.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            return _inline(definitions[ref.removeprefix("#/$defs/")], definitions)
        return {key: _inline(value, definitions) for key, value in schema.items() if key != "$defs"}
    if isinstance(schema, list):
        return [_inline(item, definitions) for item in schema]
    return schema


def json_body(*models: type[BaseModel]) -> dict[str, Any]:
    """`openapi_extra` that documents a JSON request body of one of `models`."""
    schemas = []
    for model in models:
        schema = model.model_json_schema()
        schemas.append(_inline(schema, schema.get("$defs", {})))
    body_schema = schemas[0] if len(schemas) == 1 else {"oneOf": schemas}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": body_schema}}}}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The error answers of a route, for `responses=`."""
    meaning = {
        401: "no `Authorization: Bearer <api key>` header",
        403: "unknown API key",
        413: "body or event data too large",
        422: "the body or a parameter breaks the rules; `message` says which",
        503: "RabbitMQ did not confirm; retry",
    }
    return {status: {"model": ErrorBody, "description": meaning[status]} for status in statuses}


API_KEY_SECURITY: dict[str, Any] = {"security": [{"apiKey": []}]}
