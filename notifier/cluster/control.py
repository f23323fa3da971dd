"""The control plane: commands from one instance to every instance (or to one), with replies gathered in a
bounded time. What the server API and session hand-over talk to is the `ControlPlane` protocol here;
`create_control_plane` picks the implementation for the broker:

- notifier/cluster/amqp_control.py: over RabbitMQ, between every instance on the exchange;
- notifier/cluster/local_control.py: a single instance (the in-memory broker), where commands run locally.

The commands' wire format is notifier/cluster/codec.py, and their running on an instance
notifier/cluster/runner.py.
"""

from __future__ import annotations

from typing import Protocol

from notifier.broker import Broker
from notifier.cluster.amqp_control import AmqpControlPlane
from notifier.cluster.codec import CommandArgs, CommandResult, Gathered
from notifier.cluster.local_control import LocalControlPlane
from notifier.cluster.runner import CommandHandler
from notifier.settings import Settings


class ControlPlane(Protocol):
    """Commands to all instances or to one; what the server API and session hand-over talk to."""

    instance_id: str

    @property
    def ready(self) -> bool:
        """True while commands can be sent."""

    def on(self, kind: str, handler: CommandHandler) -> None:
        """Run `handler` for each command of `kind` that reaches this instance."""

    def live_instances(self) -> set[str] | None:
        """This instance and the others heard from lately; None when this control plane cannot tell (then every
        instance counts as alive until it fails to answer)."""

    def runs(self, instance_id: str, kind: str) -> bool:
        """Whether `instance_id` runs commands of `kind` (instances announce theirs; an instance of an earlier
        release announces none, so a caller keeps to the kinds every release has)."""

    async def start(self) -> None:
        """Start receiving commands; never raises (an unreachable broker is retried in the background)."""

    async def stop(self) -> None:
        """Stop receiving commands and tell the other instances this one is gone."""

    async def broadcast(self, kind: str, args: CommandArgs, *, command_id: str | None = None) -> str:
        """Send a command to every instance, this one included; returns its id once the broker confirmed it.

        Raises BrokerUnavailable when it could not be sent."""

    async def gather(self, kind: str, args: CommandArgs, *, timeout: float) -> Gathered:
        """Send a command to every instance and collect the replies for at most `timeout` seconds."""

    async def ask(self, instance_id: str, kind: str, args: CommandArgs, *, timeout: float) -> CommandResult:
        """Send a command to one instance; its reply, or None if it did not answer within `timeout`."""


def create_control_plane(settings: Settings, broker: Broker) -> ControlPlane:
    """The AMQP control plane on the AMQP broker's connection; a local one for any other broker."""
    from notifier.broker.amqp import AmqpBroker

    if isinstance(broker, AmqpBroker):
        return AmqpControlPlane(settings, broker.instance_id, lambda: broker.connection)
    return LocalControlPlane(broker.instance_id)
