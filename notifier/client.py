"""A Python client for backends: publish events and act on users through a notifier's HTTP API.

    from notifier.client import Client

    with Client("http://notifier:8000", api_key="...") as notifier:
        notifier.publish("user.42", {"text": "Your order shipped"})
        notifier.disconnect("42", reason="session revoked")

`AsyncClient` has the same methods as coroutines. Every request that fails to connect, or whose answer is
lost (a timeout, a dropped connection), is retried with the same event or command id, so a retry never
notifies twice while it reaches the same instance within its dedupe window.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

import httpx

DEFAULT_TIMEOUT_S = 5.0
DEFAULT_RETRIES = 2
RETRY_BASE_DELAY_S = 0.2


class NotifierError(Exception):
    """Base of this client's errors."""


class NotifierAPIError(NotifierError):
    """The server answered with an error: `status` is the HTTP status, `code` the JSON `error` code
    (`unauthorized`, `forbidden`, `bad_request`, `invalid_topic`, `invalid_user`, `too_large`, `unavailable`…)."""

    def __init__(self, status: int, code: str, message: str, body: Mapping[str, Any] | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.body = dict(body or {})


class NotifierConnectionError(NotifierError):
    """The server could not be reached, or its answer was lost, after every retry."""


Event = Mapping[str, Any]
"""`{"topic": ..., "data": ..., "id"?: ...}`"""


def _new_id() -> str:
    return uuid.uuid4().hex


def _event(topic: str, data: Any, event_id: str | None) -> dict[str, Any]:
    return {"topic": topic, "data": data, "id": event_id or _new_id()}


def _events(events: Iterable[Event]) -> list[dict[str, Any]]:
    return [_event(event["topic"], event.get("data"), event.get("id")) for event in events]


def _answer(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.is_success and isinstance(body, dict):
        return body
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        raise NotifierAPIError(response.status_code, body["error"], str(body.get("message", "")), body)
    raise NotifierAPIError(response.status_code, "http_error", response.text[:200])


def _retry_delay(attempt: int) -> float:
    return float(RETRY_BASE_DELAY_S * 2**attempt)


class _Base:
    def __init__(self, api_key: str, retries: int) -> None:
        if not api_key:
            raise ValueError("api_key is required (one of the server's NOTIFIER_API_KEYS)")
        if retries < 0:
            raise ValueError("retries must be >= 0")
        self._headers = {"Authorization": f"Bearer {api_key}"}
        self._retries = retries


class Client(_Base):
    """Synchronous client; use it as a context manager or call `close()`."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str,
        timeout: float = DEFAULT_TIMEOUT_S,
        retries: int = DEFAULT_RETRIES,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(api_key, retries)
        self._http = httpx.Client(base_url=base_url, timeout=timeout, headers=self._headers, transport=transport)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        for attempt in range(self._retries + 1):
            try:
                return _answer(self._http.request(method, path, **kwargs))
            except httpx.TransportError as error:
                if attempt == self._retries:
                    raise NotifierConnectionError(f"{method} {path} failed: {error!r}") from error
                time.sleep(_retry_delay(attempt))
        raise AssertionError("unreachable")

    def publish(self, topic: str, data: Any, id: str | None = None) -> str:
        """Publish one event; returns its id once RabbitMQ confirmed it."""
        return str(self._request("POST", "/api/publish", json=_event(topic, data, id))["id"])

    def publish_many(self, events: Iterable[Event]) -> list[str]:
        """Publish a batch (all or none); returns the ids in order."""
        return [str(i) for i in self._request("POST", "/api/publish", json={"events": _events(events)})["ids"]]

    def disconnect(self, user: str, reason: str | None = None) -> str:
        """Close every connection of `user` on every instance (close code 4503); returns the command id."""
        body = {"user": user, "reason": reason, "id": _new_id()}
        return str(self._request("POST", "/api/disconnect", json=body)["command"])

    def unsubscribe(self, user: str, topic: str) -> str:
        """Take `topic` from every connection of `user`; returns the command id."""
        body = {"user": user, "topic": topic, "id": _new_id()}
        return str(self._request("POST", "/api/unsubscribe", json=body)["command"])

    def presence(self, user: str) -> dict[str, Any]:
        """`{"user", "online", "connections", "instances"}`, counted over every instance that answered."""
        return self._request("GET", "/api/presence", params={"user": user})


class AsyncClient(_Base):
    """Asynchronous client; use it as an async context manager or await `aclose()`."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str,
        timeout: float = DEFAULT_TIMEOUT_S,
        retries: int = DEFAULT_RETRIES,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(api_key, retries)
        self._http = httpx.AsyncClient(base_url=base_url, timeout=timeout, headers=self._headers, transport=transport)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        for attempt in range(self._retries + 1):
            try:
                return _answer(await self._http.request(method, path, **kwargs))
            except httpx.TransportError as error:
                if attempt == self._retries:
                    raise NotifierConnectionError(f"{method} {path} failed: {error!r}") from error
                await asyncio.sleep(_retry_delay(attempt))
        raise AssertionError("unreachable")

    async def publish(self, topic: str, data: Any, id: str | None = None) -> str:
        """Publish one event; returns its id once RabbitMQ confirmed it."""
        return str((await self._request("POST", "/api/publish", json=_event(topic, data, id)))["id"])

    async def publish_many(self, events: Iterable[Event]) -> list[str]:
        """Publish a batch (all or none); returns the ids in order."""
        answer = await self._request("POST", "/api/publish", json={"events": _events(events)})
        return [str(i) for i in answer["ids"]]

    async def disconnect(self, user: str, reason: str | None = None) -> str:
        """Close every connection of `user` on every instance (close code 4503); returns the command id."""
        body = {"user": user, "reason": reason, "id": _new_id()}
        return str((await self._request("POST", "/api/disconnect", json=body))["command"])

    async def unsubscribe(self, user: str, topic: str) -> str:
        """Take `topic` from every connection of `user`; returns the command id."""
        body = {"user": user, "topic": topic, "id": _new_id()}
        return str((await self._request("POST", "/api/unsubscribe", json=body))["command"])

    async def presence(self, user: str) -> dict[str, Any]:
        """`{"user", "online", "connections", "instances"}`, counted over every instance that answered."""
        return await self._request("GET", "/api/presence", params={"user": user})
