"""Every reach into aiormq's private parts (and the asyncio.Queue attribute one of them needs), in one place.

aiormq's public API runs each delivery in a task of its own and each request as a task that takes the
channel's lock; the consume path and the bind storm were measured faster through these internals
(bench/README.md). Each function checks that the surface it needs is there and otherwise falls back to the
public path, and tests/test_library_internals.py fails, naming the attribute, when an aiormq release renames
or removes one, so a silent fall back to the slow path cannot go unnoticed. pyproject.toml bounds aiormq to
the releases tested.
"""

from __future__ import annotations

import asyncio
import datetime
import struct
from collections.abc import Callable

import aiormq
import pamqp.decode
import structlog
from aio_pika.abc import AbstractRobustConnection
from aiormq import spec
from aiormq.abc import ChannelFrame, DeliveredMessage
from pamqp.header import ContentHeader

log = structlog.get_logger("notifier.broker")

# The private attributes used here, by owner: the test checks each is still there.
CHANNEL_INTERNALS = ("frames", "_get_frame", "_read_content", "_on_deliver_frame", "consumers", "write_queue")
CONNECTION_INTERNALS = ("READER_CLOSE_TIMEOUT",)
QUEUE_INTERNALS = ("_maxsize",)
# pamqp's table of decoders by AMQP type name (not a documented API): `timestamp` is replaced in it.
PAMQP_INTERNALS = ("METHODS",)
# The last second a datetime holds (the end of year 9999). A larger AMQP timestamp is read as a datetime past
# it (datetime.max), which notifier.formats.events.publish_time_ms refuses.
MAX_DATETIME_S = 253_402_300_799

# How long a stopping instance that sent its queue's delete waits for RabbitMQ to confirm the connection's
# close (see wait_less_for_close_ok): long enough for a queue of a thousand or so bindings to go first.
CLOSE_OK_WAIT_AFTER_DELETE_S = 0.5


async def write_frames(channel: aiormq.Channel, frames: list[spec.Queue.Bind]) -> None:
    """Put `frames` on the channel's write queue as one write, expecting no answer (nowait requests)."""
    await channel.write_queue.put(ChannelFrame.marshall(channel_number=channel.number, frames=frames))


def deepen_frame_buffer(channel: aiormq.abc.AbstractChannel, frames: int) -> None:
    """aiormq hands a channel's frames from the connection's reader to the channel's through a queue of 10:
    under a burst the connection's reader waits on it every three messages, and the two tasks take turns
    for each handful of frames. RabbitMQ sends the consume channel at most NOTIFIER_PREFETCH unacknowledged
    messages, so a queue of their frames stays bounded and lets each task run through what has arrived
    (unicast: about an eighth less CPU per delivery). With another aiormq, it is left as it is."""
    queue = getattr(channel, "frames", None)
    if isinstance(queue, asyncio.Queue) and isinstance(getattr(queue, "_maxsize", None), int):
        # asyncio.Queue reads it on every put and has no public setter.
        setattr(queue, "_maxsize", max(queue.maxsize, frames))  # noqa: B010


def inline_deliveries(
    channel: aiormq.abc.AbstractChannel, handle: Callable[[DeliveredMessage], None]
) -> aiormq.abc.ConsumerCallback:
    """The consumer callback for `channel`. aiormq runs a consumer in a task of its own per message, which
    costs a tenth of a unicast delivery; `handle` never waits, so where the channel has aiormq's usual reader
    hooks, each delivery is handled in the channel's reader as soon as its body is read, for the consumers
    the channel knows (a message for a consumer already cancelled is left unacknowledged, as aiormq leaves it).
    With another aiormq, the callback runs the usual way."""

    async def consume(message: DeliveredMessage) -> None:
        handle(message)

    get_frame = getattr(channel, "_get_frame", None)
    read_content = getattr(channel, "_read_content", None)
    consumers = getattr(channel, "consumers", None)
    if get_frame is None or read_content is None or consumers is None or not hasattr(channel, "_on_deliver_frame"):
        return consume

    async def deliver(frame: spec.Basic.Deliver) -> None:
        header = await get_frame()
        if not isinstance(header, ContentHeader):
            raise ValueError(f"unexpected frame {header!r} instead of a content header")
        message = await read_content(frame, header)
        if frame.consumer_tag not in consumers:
            return
        try:
            handle(message)
        except Exception:  # the channel's reader must go on: one bad delivery is logged, as aiormq logs it
            log.exception("delivery_failed", topic=frame.routing_key)

    channel._on_deliver_frame = deliver
    return consume


def _timestamp_in_seconds(value: bytes) -> tuple[int, datetime.datetime]:
    """An AMQP timestamp as the specification has it, whole seconds. pamqp reads any value past 2^32 - 1 as
    milliseconds, so a timestamp of year 9999 came out as one of 1978; and one past year 9999 raised out of the
    frame decoder."""
    try:
        (seconds,) = struct.unpack(">Q", value[0:8])
    except struct.error as error:
        raise ValueError("Could not unpack timestamp value") from error
    if seconds > MAX_DATETIME_S:
        return 8, datetime.datetime.max.replace(tzinfo=datetime.UTC)
    return 8, datetime.datetime.fromtimestamp(seconds, tz=datetime.UTC)


def read_timestamps_as_seconds() -> None:
    """Make pamqp read the `timestamp` property of every message as whole seconds, without its guess that a large
    value is in milliseconds (see `_timestamp_in_seconds`). With another pamqp, it is left as it is."""
    methods = getattr(pamqp.decode, "METHODS", None)
    if isinstance(methods, dict) and "timestamp" in methods:
        methods["timestamp"] = _timestamp_in_seconds


def wait_less_for_close_ok(connection: AbstractRobustConnection) -> None:
    """RabbitMQ answers a connection's close only once every channel of it is done, and a channel that sent
    a queue delete is done when the last binding is gone: seconds, for an instance that held thousands of
    users. aiormq waits up to READER_CLOSE_TIMEOUT (2 s) for that answer; the delete goes on without us, so a
    stopping instance waits less and leaves (RabbitMQ then logs the close as unexpected)."""
    underlay = connection.transport
    if underlay is not None and hasattr(underlay.connection, "READER_CLOSE_TIMEOUT"):
        underlay.connection.READER_CLOSE_TIMEOUT = CLOSE_OK_WAIT_AFTER_DELETE_S
