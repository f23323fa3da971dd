"""Draining under ASGI servers other than our own uvicorn runner (hypercorn, for one); every reach into asyncio's
private parts is here.

ASGI tells an app nothing when the server starts to stop: the lifespan `shutdown` comes only after the server
has waited for open connections, and WebSockets never end by themselves, so such a server cancels them (close
1011 and a traceback) before the app hears of the stop. When the server has put its SIGTERM/SIGINT handlers on
the event loop, this puts ours in front: drain first (clients get 1012 and reconnect elsewhere), then hand the
signal to the server's own handler, which then finds no connection left to wait for.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable

import structlog

log = structlog.get_logger("notifier.server_signals")

SIGNALS = (signal.SIGTERM, signal.SIGINT)

# asyncio's private parts used here (tests/test_library_internals.py checks they are still there): the loop's
# table of signal handlers, and a Handle's callback, its arguments and the call that runs it.
SIGNAL_HANDLERS = "_signal_handlers"
HANDLE_INTERNALS = ("_run", "_callback", "_args")


def drain_before_server_stops(drain: Callable[[], Awaitable[None]]) -> Callable[[], None]:
    """Chain `drain` in front of the loop's signal handlers the server installed; returns an undo function.

    Does nothing where the server handles signals another way (uvicorn uses `signal.signal`; our own runner
    drains by itself).
    """
    loop = asyncio.get_running_loop()
    # asyncio keeps the handlers of add_signal_handler here; there is no public way to read them. uvloop keeps
    # them out of Python's reach: then the server's stop cancels the sockets (1011), which an operator must know.
    if not hasattr(loop, SIGNAL_HANDLERS):
        log.warning(
            "drain_before_server_stop_unavailable",
            loop=type(loop).__module__,
            hint="run `notifier serve`, or the server with the asyncio loop, for clients to get 1012 on a stop",
        )
        return lambda: None
    installed: dict[int, asyncio.Handle] = dict(getattr(loop, SIGNAL_HANDLERS) or {})
    chained: list[int] = []
    draining: list[asyncio.Task[None]] = []

    def on_signal(sig: int, previous: asyncio.Handle) -> None:
        async def drain_then_pass_on() -> None:
            try:
                await drain()
            finally:
                previous._run()

        if draining:  # a second signal: no more waiting for the drain
            previous._run()
            return
        log.info("draining_before_server_stop", signal=signal.Signals(sig).name)
        draining.append(loop.create_task(drain_then_pass_on()))

    for sig in SIGNALS:
        previous = installed.get(sig)
        if previous is None or previous.cancelled():
            continue
        loop.add_signal_handler(sig, on_signal, sig, previous)
        chained.append(sig)

    def undo() -> None:
        for sig in chained:
            previous = installed[sig]
            callback, args = getattr(previous, "_callback"), getattr(previous, "_args")  # noqa: B009
            loop.add_signal_handler(sig, callback, *args)

    return undo
