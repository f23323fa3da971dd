"""Running the commands that reach this instance: one handler per kind, each command id once."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import structlog

from notifier.cluster.codec import BadControlMessage, Command, CommandArgs, CommandResult
from notifier.formats.recent import RecentIds

log = structlog.get_logger("notifier.control")

CommandHandler = Callable[[CommandArgs], Awaitable[CommandResult]]
"""Runs one command on this instance; what it returns is the reply (for `gather` and `ask`)."""

# Command ids remembered to run a repeated command once.
SEEN_COMMANDS_WINDOW_S = 600.0
SEEN_COMMANDS_MAX = 10_000


class CommandRunner:
    """Runs commands by kind, once per command id; a handler's failure is logged, never raised."""

    def __init__(self) -> None:
        self._handlers: dict[str, CommandHandler] = {}
        self._seen = RecentIds(SEEN_COMMANDS_WINDOW_S, SEEN_COMMANDS_MAX)

    def on(self, kind: str, handler: CommandHandler) -> None:
        """Run `handler` for each command of `kind`."""
        self._handlers[kind] = handler

    @property
    def kinds(self) -> frozenset[str]:
        """The kinds of command this instance runs."""
        return frozenset(self._handlers)

    async def run(self, command: Command) -> tuple[bool, CommandResult]:
        """Run `command`; returns whether it ran and what its handler returned."""
        if command.id in self._seen:
            log.info("control_command_repeated", command=command.id, kind=command.kind)
            return False, None
        handler = self._handlers.get(command.kind)
        if handler is None:
            log.warning("control_command_unknown", command=command.id, kind=command.kind)
            return False, None
        self._seen.add(command.id)
        try:
            return True, await handler(command.args)
        except BadControlMessage as error:
            log.warning("control_command_refused", command=command.id, kind=command.kind, reason=str(error))
        except Exception:
            log.exception("control_command_failed", command=command.id, kind=command.kind)
        return False, None
