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

    Walks the pattern segment by segment, keeping the topic positions reachable so far as the bits of one
    integer, so each segment is a few integer operations whatever the wildcards: a token's 32 patterns of
    the `#.#.#...` kind cost microseconds per subscribe, not the half second a set of positions took.
    """
    words = topic.split(".")
    count = len(words)
    positions_of: dict[str, int] = {}
    for position, word in enumerate(words):
        positions_of[word] = positions_of.get(word, 0) | (1 << position)
    before_end = (1 << count) - 1  # positions that still have a word to match
    everywhere = (1 << (count + 1)) - 1
    reachable = 1  # position 0
    for segment in pattern.split("."):
        if segment == "#":
            lowest = reachable & -reachable
            reachable = everywhere & ~(lowest - 1)  # zero or more words from the first reachable position
        elif segment == "*":
            reachable = (reachable & before_end) << 1
        else:
            reachable = (reachable & positions_of.get(segment, 0)) << 1
        if not reachable:
            return False
    return bool(reachable >> count & 1)
