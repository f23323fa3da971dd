"""Reaching any live node of a RabbitMQ cluster: aio-pika's robust connection, with the next node's address put
in place before each connection attempt, and one plain log line per failed attempt.

aio-pika connects to one URL (a list has been asked of it since 2018, aio-pika#141). Its robust connection
makes each attempt in the name-mangled `RobustConnection.__connect_transport`; overriding it here is the one
reach into aio-pika's private parts, and tests/test_library_internals.py fails, naming it, if a release
renames it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aio_pika
import aiormq
import structlog
from aio_pika.connection import make_url
from yarl import URL

from notifier.broker.base import BrokerUnreachable

log = structlog.get_logger("notifier.broker")

# The private method of aio_pika.RobustConnection that makes one connection attempt.
CONNECT_ATTEMPT = "_RobustConnection__connect_transport"

# aio-pika and aiormq log each failed attempt themselves (a traceback-like line each); ours says it once, plainly.
for _name in ("aio_pika.robust_connection", "aiormq.connection"):
    logging.getLogger(_name).setLevel(logging.CRITICAL)


class NodeAddresses:
    """The nodes of NOTIFIER_AMQP_URL, tried in turn: each attempt takes the next one, so after a node is lost
    the following attempt goes to another. Shared by every connection one broker makes."""

    def __init__(self, urls: list[str], **query: Any) -> None:
        if not urls:
            raise ValueError("no broker address")
        self._urls = [make_url(url, **query) for url in urls]
        self._next = 0
        self.current = self._urls[0]

    def __len__(self) -> int:
        return len(self._urls)

    def take(self) -> URL:
        """The address for the next attempt."""
        self.current = self._urls[self._next % len(self._urls)]
        self._next += 1
        return self.current


def where(url: URL) -> str:
    """A node's address as a log line shows it: host, port and vhost, never the password."""
    vhost = url.path[1:] or "/"
    return f"{url.host}:{url.port or (5671 if url.scheme == 'amqps' else 5672)} vhost {vhost!r}"


def describe_connect_failure(error: BaseException, url: URL) -> str:
    """What a failed connection attempt means, in words an operator can act on."""
    text = str(error)
    if isinstance(error, aiormq.exceptions.ProbableAuthenticationError):
        return f"RabbitMQ at {where(url)} refused the login of user {url.user!r} (NOTIFIER_AMQP_URL's credentials)"
    if isinstance(error, aiormq.exceptions.InvalidFrameError) and "Connection.Close" in text:
        return (
            f"RabbitMQ at {where(url)} refused to open the vhost: it does not exist or user {url.user!r} may not use "
            "it (rabbitmqctl add_vhost / set_permissions)"
        )
    if isinstance(error, (ConnectionError, OSError, asyncio.TimeoutError)):
        return f"cannot reach RabbitMQ at {where(url)}: {text or type(error).__name__}"
    return f"connection to RabbitMQ at {where(url)} failed: {error!r}"


class FailoverConnection(aio_pika.RobustConnection):
    """A robust connection that tries the next node of `addresses` on every attempt."""

    def __init__(self, addresses: NodeAddresses, **kwargs: Any) -> None:
        super().__init__(addresses.current, **kwargs)
        self._addresses = addresses

    async def _RobustConnection__connect_transport(self) -> None:
        self.url = self._addresses.take()
        try:
            await getattr(super(), CONNECT_ATTEMPT)()
        except (TimeoutError, aiormq.exceptions.AMQPError, OSError) as error:
            log.warning("broker_connect_attempt_failed", reason=describe_connect_failure(error, self.url))
            raise


async def connect_to_any(
    addresses: NodeAddresses, *, timeout: float, client_properties: dict[str, Any]
) -> aio_pika.abc.AbstractRobustConnection:
    """Connect to the next node of `addresses`; once connected, the connection reconnects by itself, to the next
    node each time. Raises BrokerUnreachable if the attempt fails (its line is logged already)."""
    connection = FailoverConnection(addresses, client_properties=client_properties)
    try:
        await connection.connect(timeout=timeout)
    except (TimeoutError, aiormq.exceptions.AMQPError, OSError) as error:
        raise BrokerUnreachable(describe_connect_failure(error, connection.url)) from None
    return connection
