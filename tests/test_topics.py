"""The topic grammar and AMQP pattern matching, checked against a plain recursive reference."""

from __future__ import annotations

import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from notifier.formats.grants import Grants
from notifier.formats.topics import InvalidTopic, pattern_matches, validate_pattern, validate_topic
from tests.support import reference_match

SEGMENTS = st.sampled_from(["a", "b", "c", "user", "42", "x-y", "k:v", "m@n"])
TOPICS = st.lists(SEGMENTS, min_size=1, max_size=6).map(".".join)
PATTERNS = st.lists(st.one_of(SEGMENTS, st.just("*"), st.just("#")), min_size=1, max_size=6).map(".".join)


@given(PATTERNS, TOPICS)
def test_pattern_matching_agrees_with_reference(pattern: str, topic: str) -> None:
    assert pattern_matches(pattern, topic) == reference_match(pattern.split("."), topic.split("."))


@pytest.mark.parametrize(
    ("pattern", "topic", "expected"),
    [
        ("news.*", "news.sport", True),
        ("news.*", "news", False),
        ("news.*", "news.sport.live", False),
        ("news.#", "news", True),
        ("news.#", "news.sport.live", True),
        ("#", "anything.at.all", True),
        ("*.b.#", "a.b", True),
        ("#.end", "end", True),
        ("#.end", "x.y.end", True),
        ("a.#.z", "a.z", True),
        ("a.#.z", "a.b.c.z", True),
        ("a.#.z", "a.b.c", False),
        ("user.*", "user.bob.inbox", False),
    ],
)
def test_pattern_examples(pattern: str, topic: str, expected: bool) -> None:
    assert pattern_matches(pattern, topic) is expected


@given(TOPICS)
def test_generated_topics_are_valid(topic: str) -> None:
    assert validate_topic(topic) == topic


@given(st.text(max_size=300))
def test_validate_topic_never_crashes(text: str) -> None:
    try:
        validate_topic(text)
    except InvalidTopic:
        return
    assert all(segment for segment in text.split("."))
    assert len(text.encode()) <= 255


@pytest.mark.parametrize("bad", ["", ".", "a.", ".a", "a..b", "a b", "a/b", "a.*", "#", "é", "a" * 256, None, 5])
def test_invalid_topics(bad: object) -> None:
    with pytest.raises(InvalidTopic):
        validate_topic(bad)


def test_topic_at_the_byte_limit() -> None:
    assert validate_topic("a" * 255)


@pytest.mark.parametrize("bad", ["", "a..b", "a.**", "a#", "news.#x", "a b"])
def test_invalid_patterns(bad: str) -> None:
    with pytest.raises(InvalidTopic):
        validate_pattern(bad)


def test_grants_personal_topic_and_below_only() -> None:
    grants = Grants("alice")
    assert grants.allows("user.alice")
    assert grants.allows("user.alice.inbox.urgent")
    assert not grants.allows("user.alicex")
    assert not grants.allows("user.bob")
    assert not grants.allows("user")


@given(st.sampled_from(["alice", "bob", "carol"]), st.sampled_from(["alice", "bob", "carol"]), TOPICS)
def test_grants_never_reach_another_users_topics_without_a_pattern(user: str, other: str, suffix: str) -> None:
    grants = Grants(user, ("news.#",))
    topic = f"user.{other}.{suffix}"
    assert grants.allows(topic) is (user == other)


def test_many_hash_wildcards_cost_little() -> None:
    """32 patterns of the `#.#.#...` kind against a 127-word topic once blocked the event loop ~0.5 s per
    subscribe; the bound here is generous for a shared machine and still 25 times below that."""
    topic = ".".join(["a"] * 127)
    patterns = [".".join(["#"] * 126 + ["b"])[:255], ".".join(["#", "*"] * 63 + ["b"])[:255]] * 16
    started = time.perf_counter()
    for _ in range(10):
        assert not any(pattern_matches(pattern, topic) for pattern in patterns)
    assert time.perf_counter() - started < 0.2
