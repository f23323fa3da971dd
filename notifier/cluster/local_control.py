"""The control plane of a single instance (the in-memory broker of `notifier dev`): commands run here, through
the same interface as over RabbitMQ."""

from __future__ import annotations

import asyncio

from notifier.broker import BrokerUnavailable
from notifier.cluster.codec import Command, CommandArgs, CommandResult, Gathered, new_command_id
from notifier.cluster.runner import CommandHandler, CommandRunner


class LocalControlPlane:
    """Every command runs on this instance, the only one."""

    def __init__(self, instance_id: str = "local") -> None:
        self.instance_id = instance_id
        self._runner = CommandRunner()
        self._running = False

    @property
    def ready(self) -> bool:
        return self._running

    def on(self, kind: str, handler: CommandHandler) -> None:
        self._runner.on(kind, handler)

    def runs(self, instance_id: str, kind: str) -> bool:
        return instance_id == self.instance_id and kind in self._runner.kinds

    def live_instances(self) -> set[str]:
        """Only this one: no other instance shares an in-memory broker."""
        return {self.instance_id}

    async def start(self) -> None:
        self._running = True

    async def stop(self) -> None:
        self._running = False

    def _require_running(self) -> None:
        if not self._running:
            raise BrokerUnavailable("the control plane is stopped")

    async def broadcast(self, kind: str, args: CommandArgs, *, command_id: str | None = None) -> str:
        self._require_running()
        command = Command(command_id or new_command_id(), kind, args)
        await self._runner.run(command)
        return command.id

    async def gather(self, kind: str, args: CommandArgs, *, timeout: float) -> Gathered:
        result = await self.ask(self.instance_id, kind, args, timeout=timeout)
        return Gathered({self.instance_id: result}, expected=1)

    async def ask(self, instance_id: str, kind: str, args: CommandArgs, *, timeout: float) -> CommandResult:
        self._require_running()
        if instance_id != self.instance_id:
            return None
        async with asyncio.timeout(timeout):
            _, result = await self._runner.run(Command(new_command_id(), kind, args))
        return result
