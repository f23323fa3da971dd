"""HTTP request bodies in flight: how many are being read or parsed at once, and how many bytes they hold.

Checked before a body is read (its declared Content-Length) and as it arrives (a body without one, or one
longer than it said), so work is bounded before any parse. Past either bound the request is refused at once;
the HTTP layer answers 503 `busy` with Retry-After."""

from __future__ import annotations


class BodySlot:
    """One body's place in the bounds, from before its first byte until its parse is done (`release`)."""

    __slots__ = ("_limits", "reserved")

    def __init__(self, limits: BodyLimits, reserved: int) -> None:
        self._limits: BodyLimits | None = limits
        self.reserved = reserved

    def grow(self, size: int) -> bool:
        """The body has `size` bytes so far: reserve what it has past its reservation; False if that puts the
        bytes in flight over their bound (the caller refuses it and still releases)."""
        extra = size - self.reserved
        if extra <= 0 or self._limits is None:
            return True
        if not self._limits.reserve(extra):
            return False
        self.reserved = size
        return True

    def release(self) -> None:
        """Give the slot and its bytes back; once only."""
        limits, self._limits = self._limits, None
        if limits is not None:
            limits.give_back(self)


class BodyLimits:
    """At most `max_bodies` request bodies read or parsed at once, holding at most `max_bytes` in all
    (NOTIFIER_MAX_CONCURRENT_BODIES, NOTIFIER_MAX_BODY_BYTES_IN_FLIGHT)."""

    __slots__ = ("_max_bodies", "_max_bytes", "bodies", "bytes", "refused")

    def __init__(self, *, max_bodies: int, max_bytes: int) -> None:
        self._max_bodies = max_bodies
        self._max_bytes = max_bytes
        self.bodies = 0
        self.bytes = 0
        self.refused = 0

    def enter(self, declared_bytes: int) -> BodySlot | None:
        """A slot for a body that says it has `declared_bytes` (0 if it does not say), or None when there is
        no room for it now."""
        if self.bodies >= self._max_bodies or self.bytes + declared_bytes > self._max_bytes:
            self.refused += 1
            return None
        self.bodies += 1
        self.bytes += declared_bytes
        return BodySlot(self, declared_bytes)

    def reserve(self, size: int) -> bool:
        if self.bytes + size > self._max_bytes:
            self.refused += 1
            return False
        self.bytes += size
        return True

    def give_back(self, slot: BodySlot) -> None:
        self.bodies -= 1
        self.bytes -= slot.reserved
        slot.reserved = 0
