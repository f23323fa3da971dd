"""Where a topic is authorized: a user may subscribe to its personal topic, anything under it,
and whatever the patterns of its token's `topics` claim match. Nothing else."""

from __future__ import annotations

from dataclasses import dataclass

from notifier.formats.topics import MAX_TOPIC_BYTES, InvalidTopic, is_valid_segment, pattern_matches, validate_pattern

_PERSONAL_PREFIX = "user."


def personal_topic(user: str) -> str:
    return f"{_PERSONAL_PREFIX}{user}"


def validate_user(user: object) -> str:
    """Return `user` if it can name a user (one topic segment whose personal topic is a valid topic), else
    raise InvalidTopic saying why. A `.` would reach into another user's topics, so it is refused."""
    if not isinstance(user, str) or not is_valid_segment(user):
        raise InvalidTopic("a user id must be one topic segment: letters, digits, '_', '-', ':' and '@' (no dots)")
    if len(_PERSONAL_PREFIX) + len(user) > MAX_TOPIC_BYTES:
        raise InvalidTopic(f"a user id must be at most {MAX_TOPIC_BYTES - len(_PERSONAL_PREFIX)} characters")
    return user


def validate_patterns(patterns: object, max_patterns: int) -> tuple[str, ...]:
    """Return the grant patterns of a token (a list of at most `max_patterns` patterns), else raise
    InvalidTopic saying why."""
    if not isinstance(patterns, list):
        raise InvalidTopic("topics must be a list of patterns")
    if len(patterns) > max_patterns:
        raise InvalidTopic(f"topics must hold at most {max_patterns} patterns")
    return tuple(validate_pattern(pattern) for pattern in patterns)


@dataclass(frozen=True)
class Grants:
    user: str
    patterns: tuple[str, ...] = ()

    @property
    def personal_topic(self) -> str:
        return personal_topic(self.user)

    def allows(self, topic: str) -> bool:
        """True if this user may subscribe to `topic` (assumed to be a valid topic)."""
        own = self.personal_topic
        if topic == own or topic.startswith(own + "."):
            return True
        return any(pattern_matches(pattern, topic) for pattern in self.patterns)
