"""What a session sent recently, so a client that reconnects can be given exactly what it missed.

Each entry is the event frame the hub built once for every receiver (a reference, not a copy), numbered in the
order it was handed to this session: the n-th event frame a client receives is entry n. A client that comes
back says how many it received; everything after that is replayed, if the history still holds it all.

Recording runs once per receiver of every event, so it is an append and a count; frames past the window are
dropped every few records, and the deque itself is made with the first record (an idle session has none).
"""

from __future__ import annotations

from collections import deque

from notifier.formats.wire import Frame
from notifier.settings import Settings

# Records between two sweeps of frames past the window (a power of two, minus one).
EXPIRY_EVERY = 31


class History:
    """The last event frames of one session, bounded by age (`window_s`) and by count (`max_events`).

    With `window_s` 0 (resume off) `keeps` is False: the session records only the frames that arrive before
    its welcome, to send them after it, and nothing is ever replayed from it."""

    __slots__ = ("_entries", "_max_events", "_window_s", "keeps", "sent")

    def __init__(self, *, window_s: float, max_events: int, sent: int = 0) -> None:
        self._window_s = window_s
        self._max_events = max_events
        self.keeps = window_s > 0
        # The frames themselves, oldest first: each carries the time it was made (one clock read per event,
        # not per receiver, and no allocation per receiver on the hot path).
        self._entries: deque[Frame] | None = None
        self.sent = sent  # event frames handed to this session so far: the number of the newest entry

    @classmethod
    def from_settings(cls, settings: Settings, *, sent: int = 0) -> History:
        """A session's history as NOTIFIER_RESUME_WINDOW_S and NOTIFIER_RESUME_MAX_EVENTS bound it; `sent` is the
        number of event frames the session was handed before it."""
        return cls(window_s=settings.resume_window_s, max_events=settings.resume_max_events, sent=sent)

    def __len__(self) -> int:
        return len(self._entries) if self._entries is not None else 0

    def record(self, frame: Frame) -> None:
        """Number `frame` as the next event frame of the session (the oldest goes past the count cap)."""
        try:
            self._entries.append(frame)  # type: ignore[union-attr]
        except AttributeError:  # the first record: the deque is made now (raising costs nothing until it raises)
            self._entries = deque((frame,), maxlen=self._max_events)  # it drops the oldest past the cap
        sent = self.sent = self.sent + 1
        if not sent & EXPIRY_EVERY:
            self._forget_expired()

    def _forget_expired(self) -> None:
        entries = self._entries
        if entries and self.keeps:  # with resume off, the frames before the welcome are kept whatever their age
            horizon = entries[-1].created - self._window_s
            while entries[0].created < horizon:
                entries.popleft()

    def ids_until(self, received: int, limit: int) -> list[str]:
        """The event ids of the last `limit` frames up to the `received`-th that are still held: what the client
        already had when it left."""
        entries = self._entries
        if not entries or limit <= 0 or not 0 < received <= self.sent:
            return []
        last = len(entries) - (self.sent - received)  # one past the received-th entry
        return [frame.event_id for frame in list(entries)[max(0, last - limit) : max(0, last)] if frame.event_id]

    def held(self) -> tuple[list[Frame], int]:
        """Every frame still held, oldest first, and the number of the newest (how many were handed in all)."""
        self._forget_expired()
        return list(self._entries or ()), self.sent

    def after(self, received: int) -> list[Frame] | None:
        """The frames after the `received`-th, in order; None if some of them are no longer held (or the count
        is not one this session reached)."""
        if not 0 <= received <= self.sent:
            return None
        self._forget_expired()
        missed = self.sent - received
        if missed > len(self):
            return None
        if missed == 0:
            return []
        entries = self._entries
        assert entries is not None
        return [entries[index] for index in range(len(entries) - missed, len(entries))]
