"""The HTTP stream's pure parts: the server-sent-events encoding (notifier/formats/sse.py), the resume point a
client gives as `Last-Event-ID`, the answers of a refused stream, and the stream keys that name their instance."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from notifier.connection.stream import StreamRegistry
from notifier.formats import closecodes, messages, sse
from notifier.formats.closecodes import CloseReason

pytestmark = pytest.mark.unit


def test_a_message_is_an_optional_id_line_and_one_data_line() -> None:
    assert sse.message(b'{"type":"pong","id":1}') == b'data: {"type":"pong","id":1}\n\n'
    assert sse.message(b"{}", "s.1:7") == b"id: s.1:7\ndata: {}\n\n"
    assert sse.event_id("inst.abc", 12) == "inst.abc:12"
    assert sse.HEARTBEAT == b": heartbeat\n\n"


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(),
        lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
    )
)
def test_json_with_line_breaks_stays_the_same_value_on_one_line(value: object) -> None:
    pretty = orjson.dumps(value, option=orjson.OPT_INDENT_2).replace(b"\n", b"\r\n")
    encoded = sse.message(pretty)
    assert encoded.startswith(b"data: ") and encoded.endswith(b"\n\n")
    line = encoded[len(b"data: ") : -2]
    assert b"\n" not in line and b"\r" not in line
    assert orjson.loads(line) == value


def test_the_welcome_gets_the_stream_key_and_the_heartbeat() -> None:
    welcome = messages.welcome("42", ["user.42"], 1767225600, "inst.s1", recovered=True, dropped=[])
    extended = orjson.loads(sse.welcome_for_stream(welcome, "a2V5.ZZZ", 15))
    assert extended == orjson.loads(welcome) | {"stream": "a2V5.ZZZ", "heartbeat": 15}


def test_the_close_message_carries_the_close_code_and_reason() -> None:
    assert sse.close(closecodes.SHUTDOWN) == b'data: {"type":"close","code":1012,"reason":"server restarting"}\n\n'


@pytest.mark.parametrize(
    ("value", "resume"),
    [
        ("inst.abc:0", messages.Resume("inst.abc", 0)),
        ("inst.abc:17", messages.Resume("inst.abc", 17)),
        ("a:b:c:9", messages.Resume("a:b:c", 9)),  # the count is after the last colon
        ("s:007", messages.Resume("s", 7)),
        ("s:9007199254740991", messages.Resume("s", 2**53 - 1)),
        ("x" * 128 + ":1", messages.Resume("x" * 128, 1)),
    ],
)
def test_a_resume_point_is_the_session_and_the_count(value: str, resume: messages.Resume) -> None:
    assert sse.parse_resume_point(value) == resume


@pytest.mark.parametrize(
    "value",
    [
        "",
        "no-colon",
        "s:",
        ":5",
        "s:-1",
        "s:+1",
        "s:1.5",
        "s:1e3",
        "s: 5",
        "s:5 ",
        "s:٣",  # a digit, but not an ASCII one
        "s:9007199254740992",
        "s:" + "9" * 17,
        "a b:1",
        "tab\there:1",
        "é:1",
        "x" * 129 + ":1",
    ],
)
def test_a_malformed_resume_point_is_refused(value: str) -> None:
    with pytest.raises(sse.BadResumePoint):
        sse.parse_resume_point(value)


@given(
    st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=128),
    st.integers(0, 2**53 - 1),
)
def test_every_id_the_server_writes_reads_back_as_its_resume_point(session: str, count: int) -> None:
    assert sse.parse_resume_point(sse.event_id(session, count)) == messages.Resume(session, count)


@pytest.mark.parametrize(
    ("reason", "status", "error", "retry"),
    [
        (closecodes.INVALID_TOKEN, 401, "invalid_token", False),
        (closecodes.TOKEN_EXPIRED, 401, "token_expired", True),
        (closecodes.PROTOCOL_VIOLATION, 401, "token_missing", False),
        (closecodes.REFUSED_BY_APPLICATION, 403, "refused_by_application", False),
        (closecodes.USER_CONNECTION_LIMIT, 429, "too_many_user_connections", False),
        (closecodes.RATE_LIMITED, 429, "rate_limited", True),
        (closecodes.SERVER_FULL, 503, "instance_full", True),
        (closecodes.TRY_AGAIN_LATER, 503, "unavailable", True),
        (closecodes.APPLICATION_UNAVAILABLE, 503, "application_unavailable", True),
        (closecodes.SHUTDOWN, 503, "restarting", True),
        (closecodes.AUTH_TIMEOUT, 503, "unavailable", True),  # no row of its own: retryable
        (CloseReason(4599, "something terminal"), 400, "bad_request", False),
    ],
)
def test_a_close_before_the_welcome_is_answered_with_its_status(
    reason: CloseReason, status: int, error: str, retry: bool
) -> None:
    answered, body, retry_after = sse.refusal(reason)
    assert (answered, body["error"], body["code"], retry_after) == (status, error, reason.code, retry)
    assert isinstance(body["message"], str) and body["message"]


@pytest.mark.parametrize("instance_id", ["0123456789ab", "pod-7.notifier:8000", "ünïcode id", "a" * 100])
def test_a_stream_key_is_url_safe_unguessable_and_names_its_instance(instance_id: str) -> None:
    registry = StreamRegistry(instance_id, heartbeat_s=15)
    keys = {registry.new_key() for _ in range(100)}
    assert len(keys) == 100
    for key in keys:
        assert all(character.isascii() and (character.isalnum() or character in "-_.") for character in key), key
        assert StreamRegistry.holder_of(key) == instance_id
        assert len(key.rpartition(".")[2]) >= 22  # 128 random bits, in base64


@pytest.mark.parametrize("key", ["", "nodot", ".only-token", "prefix.", "%%%.abc", "\udcff.abc"])
def test_a_string_that_is_no_key_names_no_instance(key: str) -> None:
    assert StreamRegistry.holder_of(key) is None
