"""The grammar of topics and of the AMQP-style patterns that grant them.

A topic is `.`-separated segments of ASCII letters, digits, `_`, `-`, `:` and `@`, at most 255 bytes.
A pattern is a topic whose segments may also be `*` (exactly one segment) or `#` (zero or more segments).
"""

from __future__ import annotations

import re

MAX_TOPIC_BYTES = 255

_SEGMENT = r"[A-Za-z0-9_\-:@]+"
_TOPIC_RE = re.compile(rf"{_SEGMENT}(?:\.{_SEGMENT})*")
_PATTERN_SEGMENT_RE = re.compile(rf"{_SEGMENT}|\*|#")
_SEGMENT_RE = re.compile(_SEGMENT)


class InvalidTopic(ValueError):
    """A string that is not a topic (or not a pattern), with the reason in its message."""


def is_valid_segment(segment: str) -> bool:
    return _SEGMENT_RE.fullmatch(segment) is not None


def validate_topic(topic: object) -> str:
    """Return `topic` unchanged if it is a valid topic, else raise InvalidTopic saying why."""
    if not isinstance(topic, str):
        raise InvalidTopic("topic must be a string")
    if not topic:
        raise InvalidTopic("topic must not be empty")
    if len(topic.encode("utf-8", "surrogatepass")) > MAX_TOPIC_BYTES:
        raise InvalidTopic(f"topic is longer than {MAX_TOPIC_BYTES} bytes")
    if _TOPIC_RE.fullmatch(topic) is None:
        raise InvalidTopic("topic must be '.'-separated non-empty segments of letters, digits, '_', '-', ':' and '@'")
    return topic


def validate_pattern(pattern: object) -> str:
    """Return `pattern` unchanged if it is a valid pattern, else raise InvalidTopic saying why."""
    if not isinstance(pattern, str):
        raise InvalidTopic("pattern must be a string")
    if not pattern or len(pattern.encode("utf-8", "surrogatepass")) > MAX_TOPIC_BYTES:
        raise InvalidTopic(f"pattern must be 1 to {MAX_TOPIC_BYTES} bytes")
    for segment in pattern.split("."):
        if _PATTERN_SEGMENT_RE.fullmatch(segment) is None:
            raise InvalidTopic(f"pattern segment {segment!r} is not a word, '*' or '#'")
    return pattern


def pattern_matches(pattern: str, topic: str) -> bool:
    """True if the AMQP topic pattern `pattern` matches `topic` (both assumed valid).

    Walks the pattern segment by segment, keeping the set of topic positions reachable so far;
    both sides are bounded by MAX_TOPIC_BYTES, so this stays small.
    """
    words = topic.split(".")
    reachable = {0}
    for segment in pattern.split("."):
        following: set[int] = set()
        for position in reachable:
            if segment == "#":
                following.update(range(position, len(words) + 1))
            elif position < len(words) and segment in ("*", words[position]):
                following.add(position + 1)
        if not following:
            return False
        reachable = following
    return len(words) in reachable
