"""Publishing events from the HTTP API: a batch at once, and never twice an id this instance published lately.

The memory of ids is per instance: a retry that reaches another instance publishes again (clients drop the
repeat by its id).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from notifier.broker import Broker, BrokerUnavailable, PublishNotSent
from notifier.formats.recent import RecentIds
from notifier.settings import Settings


@dataclass(frozen=True)
class OutgoingEvent:
    topic: str
    data: bytes  # JSON text
    id: str


# Events of one batch waiting for RabbitMQ's confirm at once: a pipeline, not the whole batch, so a batch stays
# within NOTIFIER_MAX_PENDING_PUBLISHES beside other requests.
BATCH_WINDOW = 64


class EventPublisher:
    """Publishes through the broker with confirms; an id published within the dedupe window is skipped."""

    def __init__(self, broker: Broker, settings: Settings) -> None:
        self._broker = broker
        self._recent = RecentIds(settings.publish_dedupe_window_s, settings.publish_dedupe_max_ids)
        # Ids being published right now: a retry that overtakes its first attempt waits for it.
        self._in_flight: dict[str, asyncio.Future[bool]] = {}
        self.repeats_skipped = 0

    async def publish(self, events: Sequence[OutgoingEvent]) -> None:
        """Publish every event; returns once the broker confirmed them all.

        Raises BrokerUnavailable if any was not confirmed: the others may have been published, and a retry
        with the same ids publishes only those that were not.
        """
        steps = []
        registered: list[tuple[str, asyncio.Future[bool]]] = []
        window = asyncio.Semaphore(BATCH_WINDOW)
        for event in events:
            if event.id in self._recent:
                self.repeats_skipped += 1
                continue
            earlier = self._in_flight.get(event.id)
            if earlier is not None:
                steps.append(self._await_earlier(earlier))
                continue
            # Registered before any await, so a concurrent request with the same id finds it.
            done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
            self._in_flight[event.id] = done
            registered.append((event.id, done))
            steps.append(self._publish_one(event, done, window))
        try:
            results = await asyncio.gather(*steps, return_exceptions=True)
        finally:
            # A cancelled request may leave steps that never started: nothing may wait on them forever.
            for event_id, done in registered:
                if not done.done():
                    done.set_result(False)
                if self._in_flight.get(event_id) is done:
                    del self._in_flight[event_id]
        failures = [result for result in results if isinstance(result, BaseException)]
        # One that RabbitMQ may have seen says more than one refused before it was sent.
        for failure in sorted(failures, key=lambda failure: isinstance(failure, PublishNotSent)):
            raise failure

    async def _publish_one(self, event: OutgoingEvent, done: asyncio.Future[bool], window: asyncio.Semaphore) -> None:
        published = False
        try:
            async with window:
                await self._broker.publish(event.topic, event.data, event.id)
            published = True
            self._recent.add(event.id)
        finally:
            if not done.done():
                done.set_result(published)

    async def _await_earlier(self, earlier: asyncio.Future[bool]) -> None:
        self.repeats_skipped += 1
        if not await asyncio.shield(earlier):
            raise BrokerUnavailable("an earlier publish of the same id was not confirmed; retry")
