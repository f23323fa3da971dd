"""The bounds on request bodies in flight (notifier/limits/bodies.py): count and bytes, declared or as they come;
and the process that parses large bodies (notifier/http/bodies.py)."""

from __future__ import annotations

from functools import partial

import orjson
import pytest

from notifier.formats.publish_body import BadPublishBody, parse_publish_body
from notifier.http.bodies import PARSE_ON_LOOP_MAX_BYTES, RequestBodies
from notifier.limits.bodies import BodyLimits
from notifier.settings import Settings

pytestmark = pytest.mark.unit


def test_bodies_past_the_count_are_refused_until_one_is_released() -> None:
    limits = BodyLimits(max_bodies=2, max_bytes=1000)
    first, second = limits.enter(10), limits.enter(10)
    assert first is not None and second is not None
    assert limits.enter(10) is None and limits.refused == 1
    first.release()
    first.release()  # once only
    assert limits.bodies == 1 and limits.bytes == 10
    assert limits.enter(10) is not None


def test_declared_bytes_past_the_bound_are_refused_before_reading() -> None:
    limits = BodyLimits(max_bodies=10, max_bytes=1000)
    held = limits.enter(600)
    assert held is not None
    assert limits.enter(500) is None
    assert limits.enter(400) is not None
    assert limits.bytes == 1000


def test_a_body_that_grows_past_what_it_declared_is_counted_as_it_comes() -> None:
    limits = BodyLimits(max_bodies=10, max_bytes=1000)
    chunked = limits.enter(0)  # no Content-Length
    assert chunked is not None
    assert chunked.grow(300) and chunked.grow(700) and limits.bytes == 700
    other = limits.enter(300)
    assert other is not None
    assert not chunked.grow(701)
    chunked.release()
    other.release()
    assert (limits.bodies, limits.bytes) == (0, 0)


def test_the_bytes_in_flight_hold_at_least_the_largest_publish_body() -> None:
    with pytest.raises(ValueError, match="NOTIFIER_MAX_BODY_BYTES_IN_FLIGHT"):
        Settings(_env_file=None, max_publish_body_bytes=8 * 2**20, max_body_bytes_in_flight=4 * 2**20)  # type: ignore[call-arg]
    Settings(_env_file=None, max_publish_body_bytes=8 * 2**20, max_body_bytes_in_flight=8 * 2**20)  # type: ignore[call-arg]


async def test_the_parse_process_answers_as_the_inline_parse_and_is_started_again_when_lost() -> None:
    events = [{"topic": "news.a", "data": {"n": number, "pad": "x" * 500}, "id": f"e-{number}"} for number in range(60)]
    body = orjson.dumps({"events": events})
    assert len(body) > PARSE_ON_LOOP_MAX_BYTES
    parse = partial(parse_publish_body, max_events=1000, max_event_bytes=65536)
    bodies = RequestBodies(Settings(_env_file=None))  # type: ignore[call-arg]
    try:
        await bodies.start()
        assert await bodies.parse(body, parse) == parse(body)
        bad = orjson.dumps({"events": [*events[:40], {"topic": "news.a"}, *events[41:]]})
        with pytest.raises(BadPublishBody) as refused:
            await bodies.parse(bad, parse)
        assert (refused.value.status, refused.value.code, refused.value.index) == (422, "bad_request", 40)
        process = await bodies._parser.start()
        process.kill()
        await process.wait()
        assert await bodies.parse(body, parse) == parse(body)  # a new one
        second = await bodies._parser.start()
        assert second is not process
    finally:
        await bodies.close()
    assert second.returncode is not None  # stopped with the app
