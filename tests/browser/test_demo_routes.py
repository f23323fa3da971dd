"""The demo page, the `/static` client and the dev-only routes, through the ASGI app on the in-memory broker."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from notifier.app import create_app
from notifier.connection.auth import TokenVerifier
from notifier.http.routes.demo import CLIENT_FILES, DEMO_FILES, STATIC_DIR
from notifier.settings import Settings
from tests.browser.conftest import SECRET

pytestmark = pytest.mark.timeout(30)


def app_with(*, dev: bool, demo_page: bool) -> FastAPI:
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        amqp_url="memory://",
        jwt_secret=SECRET,
        api_keys=["demo-routes-test-key-0123"],
        demo_page=demo_page,
        log_format="console",
        shutdown_timeout_s=1,
    )
    return create_app(settings, dev=dev)


@pytest.fixture
def serve_only() -> Iterator[TestClient]:
    with TestClient(app_with(dev=False, demo_page=False)) as client:
        yield client


@pytest.fixture
def serve_with_demo_page() -> Iterator[TestClient]:
    with TestClient(app_with(dev=False, demo_page=True)) as client:
        yield client


@pytest.fixture
def dev() -> Iterator[TestClient]:
    with TestClient(app_with(dev=True, demo_page=True)) as client:
        yield client


@pytest.mark.parametrize("path", ["/dev/token", "/dev/publish"])
def test_dev_routes_do_not_exist_outside_dev_mode(serve_only: TestClient, path: str) -> None:
    response = serve_only.post(path, json={"user": "mallory", "topic": "user.ada", "data": 1})
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"


@pytest.mark.parametrize("path", ["/dev/token", "/dev/publish"])
def test_dev_routes_do_not_exist_with_only_the_demo_page_on(serve_with_demo_page: TestClient, path: str) -> None:
    assert serve_with_demo_page.post(path, json={"user": "mallory"}).status_code == 404
    assert serve_with_demo_page.get("/demo/config").json() == {"dev": False}


def test_demo_page_is_off_by_default(serve_only: TestClient) -> None:
    assert serve_only.get("/").status_code == 404
    assert serve_only.get("/static/demo.js").status_code == 404
    assert serve_only.get("/static/index.html").status_code == 404


def test_client_library_is_always_served_to_any_origin(serve_only: TestClient) -> None:
    script = serve_only.get("/static/notifier.js", headers={"Origin": "https://app.example.com"})
    assert script.status_code == 200
    assert "javascript" in script.headers["content-type"]
    assert script.headers["access-control-allow-origin"] == "*"
    assert "export class NotifierClient" in script.text
    types = serve_only.get("/static/notifier.d.ts")
    assert types.status_code == 200
    assert "declare class NotifierClient" in types.text
    assert types.headers["content-type"] == "text/plain; charset=utf-8"  # not the MIME table's Qt translation file


def test_demo_page_is_served_at_root_when_enabled(serve_with_demo_page: TestClient) -> None:
    page = serve_with_demo_page.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert '<script type="module" src="/static/demo.js">' in page.text
    assert serve_with_demo_page.get("/static/demo.css").status_code == 200


@pytest.mark.parametrize("demo_page", [False, True], ids=["serve only", "demo page"])
def test_static_serves_the_client_and_demo_files_only_never_the_npm_package_files(demo_page: bool) -> None:
    """notifier/static is also the client's npm package: its package.json and README.md are not assets."""
    served = CLIENT_FILES | (DEMO_FILES if demo_page else frozenset())
    with TestClient(app_with(dev=False, demo_page=demo_page)) as client:
        for name in ("package.json", "README.md", "./package.json"):
            assert client.get(f"/static/{name}").status_code == 404, name
        for path in STATIC_DIR.iterdir():
            status = client.get(f"/static/{path.name}").status_code
            assert status == (200 if path.name in served else 404), (path.name, status)


async def test_dev_token_is_a_token_the_service_accepts(dev: TestClient) -> None:
    assert dev.get("/demo/config").json() == {"dev": True}
    response = dev.post("/dev/token", json={"user": "ada", "topics": ["news.#"], "ttl_s": 60})
    assert response.status_code == 200
    body = response.json()
    assert body["user"] == "ada"
    identity = await TokenVerifier(dev.app.state.node.settings).verify(body["token"])  # type: ignore[attr-defined]
    assert identity.user == "ada"
    assert identity.grants.allows("news.sport")
    assert not identity.grants.allows("user.bob")
    assert abs(identity.expires_at - body["expires"]) <= 1


@pytest.mark.parametrize(
    ("payload", "status", "code"),
    [
        ({"user": "a.b"}, 422, "bad_request"),
        ({"user": "ada", "topics": ["news..x"]}, 422, "invalid_topic"),
        ({"user": "ada", "ttl_s": 10**9}, 422, "bad_request"),
        ({"user": "ada", "topics": "news.#"}, 422, "bad_request"),
    ],
)
def test_dev_token_refuses_bad_input(dev: TestClient, payload: dict[str, Any], status: int, code: str) -> None:
    response = dev.post("/dev/token", json=payload)
    assert response.status_code == status
    assert response.json()["error"] == code


def test_dev_publish_reaches_a_subscribed_websocket_through_the_broker(dev: TestClient) -> None:
    token = dev.post("/dev/token", json={"user": "ada"}).json()["token"]
    with dev.websocket_connect("/ws") as websocket:
        websocket.send_json({"type": "auth", "token": token})
        assert websocket.receive_json()["type"] == "welcome"
        published = dev.post("/dev/publish", json={"topic": "user.ada", "data": {"text": "hi"}})
        assert published.status_code == 202
        event = websocket.receive_json()
        assert event["type"] == "event"
        assert event["topic"] == "user.ada"
        assert event["data"] == {"text": "hi"}
        assert event["id"] == published.json()["id"]


@pytest.mark.parametrize(
    ("payload", "status", "code"),
    [
        ({"topic": "bad topic", "data": 1}, 422, "invalid_topic"),
        ({"topic": "user.ada"}, 422, "bad_request"),
        ({"topic": "user.ada", "data": "x" * 70_000}, 413, "too_large"),
    ],
)
def test_dev_publish_refuses_bad_input(dev: TestClient, payload: dict[str, Any], status: int, code: str) -> None:
    response = dev.post("/dev/publish", json=payload)
    assert response.status_code == status
    assert response.json()["error"] == code


CROSS_SITE_REQUESTS = [
    # What a page on another site can send without a CORS preflight: text/plain (or a form) with its Origin.
    ({"Content-Type": "text/plain", "Origin": "https://evil.example.net"}, 415, "unsupported_media_type"),
    ({"Content-Type": "application/x-www-form-urlencoded"}, 415, "unsupported_media_type"),
    # JSON with another site's Origin or Sec-Fetch-Site (only possible after a preflight that is never granted).
    ({"Content-Type": "application/json", "Origin": "https://evil.example.net"}, 403, "cross_site"),
    ({"Content-Type": "application/json", "Origin": "http://testserver:8001"}, 403, "cross_site"),
    ({"Content-Type": "application/json", "Sec-Fetch-Site": "cross-site"}, 403, "cross_site"),
]


@pytest.mark.parametrize("path", ["/dev/token", "/dev/publish"])
@pytest.mark.parametrize(("headers", "status", "code"), CROSS_SITE_REQUESTS)
def test_dev_routes_refuse_cross_site_requests(
    dev: TestClient, path: str, headers: dict[str, str], status: int, code: str
) -> None:
    body = b'{"user": "mallory", "topic": "user.ada", "data": "forged"}'
    with dev.websocket_connect("/ws") as websocket:
        websocket.send_json({"type": "auth", "token": dev.post("/dev/token", json={"user": "ada"}).json()["token"]})
        assert websocket.receive_json()["type"] == "welcome"
        response = dev.post(path, content=body, headers=headers)
        assert response.status_code == status, response.text
        assert response.json()["error"] == code
        # Nothing was published: the next thing the socket sees is our own event, not the forged one.
        assert dev.post("/dev/publish", json={"topic": "user.ada", "data": "ours"}).status_code == 202
        assert websocket.receive_json()["data"] == "ours"


def test_dev_routes_answer_the_servers_own_page(dev: TestClient) -> None:
    headers = {"Origin": "http://testserver", "Sec-Fetch-Site": "same-origin"}
    response = dev.post("/dev/publish", json={"topic": "user.ada", "data": 1}, headers=headers)
    assert response.status_code == 202, response.text
    assert dev.post("/dev/token", json={"user": "ada"}, headers=headers).status_code == 200
