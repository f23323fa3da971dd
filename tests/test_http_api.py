"""`POST /api/publish`, `/healthz` and `/readyz` over real HTTP."""

from __future__ import annotations

import httpx
import pytest

from tests.support import API_KEY, RunningServer, StartServer, amqp_url_through, free_port

AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture
async def http(server: RunningServer) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=server.http_url)


@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        ({}, 401, "unauthorized"),
        ({"Authorization": "Basic abc"}, 401, "unauthorized"),
        ({"Authorization": "Bearer"}, 401, "unauthorized"),
        ({"Authorization": "Bearer wrong-key"}, 403, "forbidden"),
    ],
)
async def test_publish_needs_a_known_api_key(
    http: httpx.AsyncClient, headers: dict[str, str], status: int, code: str
) -> None:
    response = await http.post("/api/publish", json={"topic": "a", "data": 1}, headers=headers)
    assert response.status_code == status
    assert response.json()["error"] == code


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"not json", 422, "bad_request"),
        (b"[1]", 422, "bad_request"),
        (b'{"topic": "a"}', 422, "bad_request"),
        (b'{"topic": "a", "data": 1, "extra": 2}', 422, "bad_request"),
        (b'{"topic": "a..b", "data": 1}', 422, "invalid_topic"),
        (b'{"topic": "news.#", "data": 1}', 422, "invalid_topic"),
        (b'{"data": 1}', 422, "invalid_topic"),
        (b'{"topic": "a", "data": 1, "id": "has space"}', 422, "bad_request"),
        (b'{"topic": "a", "data": 1, "id": 5}', 422, "bad_request"),
        (b'{"topic": "a", "data": "' + b"x" * 70_000 + b'"}', 413, "too_large"),
    ],
)
async def test_publish_refuses_bad_bodies(http: httpx.AsyncClient, body: bytes, status: int, code: str) -> None:
    response = await http.post("/api/publish", content=body, headers={**AUTH, "Content-Type": "application/json"})
    assert response.status_code == status, response.text
    assert response.json()["error"] == code
    assert response.json()["message"]


async def test_publish_assigns_an_id(http: httpx.AsyncClient) -> None:
    response = await http.post("/api/publish", json={"topic": "a.b", "data": None}, headers=AUTH)
    assert response.status_code == 202
    assert len(response.json()["id"]) == 32


async def test_unknown_route_is_json_404(http: httpx.AsyncClient) -> None:
    response = await http.get("/nope")
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"


async def test_broker_down_means_not_ready_and_publish_503(start_server: StartServer) -> None:
    running = await start_server(amqp_url=amqp_url_through(free_port()), broker_timeout_s=1)  # nobody listens
    async with httpx.AsyncClient(base_url=running.http_url) as http:
        assert (await http.get("/healthz")).status_code == 200
        ready = await http.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["status"] == "unavailable"
        response = await http.post("/api/publish", json={"topic": "a", "data": 1}, headers=AUTH)
        assert response.status_code == 503
        assert response.json()["error"] == "unavailable"
