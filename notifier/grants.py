"""Where a topic is authorized: a user may subscribe to its personal topic, anything under it,
and whatever the patterns of its token's `topics` claim match. Nothing else."""

from __future__ import annotations

from dataclasses import dataclass

from notifier.topics import pattern_matches


def personal_topic(user: str) -> str:
    return f"user.{user}"


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
