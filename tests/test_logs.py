"""What reaches the log: bounded, redacted lines, and real tracebacks for our own errors."""

from __future__ import annotations

import io
import json
import logging
import sys

import pytest
import structlog

from notifier.logs import MAX_FIELD_CHARS, configure_logging, redact

pytestmark = pytest.mark.unit

JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLW9mLXRoZS10b2tlbg"


@pytest.mark.parametrize(
    "text",
    [
        f"GET /ws?token={JWT} HTTP/1.1",
        f"/ws?%74oken={JWT}",
        f"/ws?x=1&%74%6F%6B%65%6E={JWT}&y=2",
        f"/ws?ACCESS_TOKEN={JWT}",
        "/ws?api%5Fkey=secret-value-123",
        f"frame {{'type': 'auth', 'token': '{JWT}'}}",
    ],
)
def test_secrets_are_redacted_wherever_they_appear(text: str) -> None:
    redacted = redact(text)
    assert "c2lnbmF0dXJl" not in redacted
    assert "secret-value-123" not in redacted
    assert "[redacted]" in redacted


def test_other_query_parameters_are_kept() -> None:
    assert redact("/ws?topic=news&page=2") == "/ws?topic=news&page=2"


def read_json_lines(err: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in err.splitlines() if line.strip()]


def test_our_errors_have_a_real_traceback_and_client_text_is_bounded(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("json", "info")
    try:
        raise ValueError("boom " + "x" * 50_000)
    except ValueError:
        logging.getLogger("uvicorn.error").exception("Exception in ASGI application")
        structlog.get_logger("notifier.test").exception("ours_failed", frame="y" * 50_000 + JWT)
    records = read_json_lines(capsys.readouterr().err)
    assert len(records) == 2
    for record in records:
        exception = str(record["exception"])
        assert exception.startswith("Traceback (most recent call last)"), exception[:200]
        assert "raise ValueError" in exception
        assert "<traceback object" not in json.dumps(record)
        assert len(exception) < 20_000
    assert len(str(records[1]["frame"])) < MAX_FIELD_CHARS + 100
    assert "c2lnbmF0dXJl" not in json.dumps(records)


def test_a_line_that_cannot_be_written_fails_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    configure_logging("json", "info")
    closed = io.StringIO()
    closed.close()
    monkeypatch.setattr(sys, "stderr", closed)
    structlog.get_logger("notifier.test").info("nowhere_to_go")  # must not raise into the code that logs
