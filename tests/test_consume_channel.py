"""The consume channel's fast path (notifier/broker/aiormq_internals.py): deliveries handled in the channel's
reader, and its frame queue sized to the prefetch, against a stand-in for aiormq's channel hooks; the real path is every
end-to-end delivery test."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiormq import spec
from aiormq.abc import DeliveredMessage
from pamqp.body import ContentBody
from pamqp.header import ContentHeader

from notifier.broker.aiormq_internals import deepen_frame_buffer, inline_deliveries

pytestmark = pytest.mark.unit


class ChannelHooks:
    """The reader hooks of an aiormq channel: frames come from a list instead of the socket."""

    def __init__(self) -> None:
        self.frames: list[Any] = []
        self.consumers: dict[str, Any] = {"ours": None}

    async def _get_frame(self) -> Any:
        return self.frames.pop(0)

    async def _read_content(self, frame: spec.Basic.Deliver, header: ContentHeader) -> DeliveredMessage:
        body = await self._get_frame()
        assert isinstance(body, ContentBody)
        return DeliveredMessage(delivery=frame, header=header, body=body.value, channel=self)  # type: ignore[arg-type]

    async def _on_deliver_frame(self, frame: spec.Basic.Deliver) -> None:
        raise AssertionError("replaced by the inline handler")

    def queue(self, body: bytes) -> None:
        self.frames += [ContentHeader(body_size=len(body)), ContentBody(body)]


def deliver_frame(tag: int, consumer: str = "ours") -> spec.Basic.Deliver:
    return spec.Basic.Deliver(consumer_tag=consumer, delivery_tag=tag, routing_key="user.a")


async def test_each_delivery_is_handled_in_the_reader_and_a_failing_one_does_not_stop_it() -> None:
    channel = ChannelHooks()
    handled: list[bytes] = []

    def handle(message: DeliveredMessage) -> None:
        if message.body == b"bad":
            raise RuntimeError("a bug in one delivery")
        handled.append(message.body)

    inline_deliveries(channel, handle)  # type: ignore[arg-type]
    for tag, body in enumerate((b"1", b"bad", b"2"), start=1):
        channel.queue(body)
        await channel._on_deliver_frame(deliver_frame(tag))  # the reader awaits it; it must not raise
    assert handled == [b"1", b"2"]
    assert channel.frames == []  # every frame of every message was read


async def test_a_delivery_for_a_consumer_no_longer_there_is_read_but_not_handled() -> None:
    channel = ChannelHooks()
    handled: list[bytes] = []
    inline_deliveries(channel, lambda message: handled.append(message.body))  # type: ignore[arg-type]
    channel.queue(b"late")
    await channel._on_deliver_frame(deliver_frame(1, consumer="cancelled"))
    assert handled == []
    assert channel.frames == []


async def test_without_the_reader_hooks_the_callback_handles_each_message() -> None:
    handled: list[bytes] = []
    callback = inline_deliveries(object(), lambda message: handled.append(message.body))  # type: ignore[arg-type]
    message = DeliveredMessage(delivery=deliver_frame(1), header=ContentHeader(), body=b"x", channel=None)  # type: ignore[arg-type]
    await callback(message)
    assert handled == [b"x"]


async def test_the_consume_channels_frame_queue_is_deepened_to_the_prefetchs_frames_and_no_further() -> None:
    channel = ChannelHooks()
    channel.frames = asyncio.Queue(maxsize=10)  # type: ignore[assignment]  # aiormq's default
    deepen_frame_buffer(channel, 3 * 512)  # type: ignore[arg-type]
    queue: asyncio.Queue[int] = channel.frames  # type: ignore[assignment]
    assert queue.maxsize == 1536
    for number in range(1536):
        queue.put_nowait(number)
    assert queue.full()  # still bounded: a put beyond it waits for the channel's reader
    deepen_frame_buffer(object(), 1536)  # type: ignore[arg-type]  # another aiormq: left alone
