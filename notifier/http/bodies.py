"""Request bodies of the HTTP API, bounded before they are parsed: how many are read or parsed at once and the
bytes they hold (notifier/limits/bodies.py), how long one may take to arrive, and where a large one is parsed.

A large body is parsed in a process of its own, one body at a time, never in the serving process: a 4 MiB
batch built of small containers takes a second or more to parse, and its objects take 30 times its size.
Parsed on the event loop, a few at once stalled every WebSocket for seconds and took memory the process kept;
a thread does not help, as the JSON parser holds the interpreter lock for the whole parse
(bench/publish_flood.py measures it). The parse process comes back with bytes only (each event's data
encoded again), so what the serving process holds is bounded by the bodies in flight."""

from __future__ import annotations

import asyncio
import contextlib
import pickle
import sys
from collections.abc import AsyncIterator, Callable
from typing import TypeVar, cast

import structlog
from starlette.requests import ClientDisconnect, Request

from notifier.formats.publish_body import frame
from notifier.http.errors import ApiError
from notifier.limits.bodies import BodyLimits
from notifier.settings import Settings

log = structlog.get_logger("notifier.http")

T = TypeVar("T")

# Bodies up to this size are parsed on the event loop (a few milliseconds at worst); larger ones in the parse
# process.
PARSE_ON_LOOP_MAX_BYTES = 16 * 1024
# What a refused request is told to wait before it tries again.
RETRY_AFTER_S = 1


class RequestBodies:
    """Reads each request body within NOTIFIER_MAX_CONCURRENT_BODIES, NOTIFIER_MAX_BODY_BYTES_IN_FLIGHT and
    NOTIFIER_REQUEST_BODY_TIMEOUT_S, and parses it (`parse`) on the loop or in the parse process by its size."""

    def __init__(self, settings: Settings) -> None:
        self.limits = BodyLimits(max_bodies=settings.max_concurrent_bodies, max_bytes=settings.max_body_bytes_in_flight)
        self.timeout_s = settings.request_body_timeout_s
        self._parser = ParseProcess()
        self.abandoned = 0  # bodies whose client left before sending them whole
        self.timed_out = 0

    @contextlib.asynccontextmanager
    async def read(self, request: Request, limit: int) -> AsyncIterator[bytes]:
        """The body of `request`, at most `limit` bytes, held within the bounds until the block ends (parse it
        inside). Raises ApiError: 413 past `limit`, 503 `busy` with Retry-After past a bound, 408 `timeout`
        when it does not arrive in time, and `client_disconnected` (logged as one INFO line) when the client
        leaves mid-body."""
        declared = request.headers.get("content-length")
        size = int(declared) if declared is not None and declared.isdigit() else 0
        if size > limit:
            raise ApiError(413, "too_large", f"request body is over {limit} bytes")
        slot = self.limits.enter(size)
        if slot is None:
            raise self._busy()
        try:
            body = await self._receive(request, limit, slot.grow)
            yield body
        finally:
            slot.release()

    async def _receive(self, request: Request, limit: int, grow: Callable[[int], bool]) -> bytes:
        body = bytearray()
        try:
            async with asyncio.timeout(self.timeout_s):
                async for chunk in request.stream():
                    body += chunk
                    if len(body) > limit:
                        raise ApiError(413, "too_large", f"request body is over {limit} bytes")
                    if not grow(len(body)):
                        raise self._busy()
        except TimeoutError:
            self.timed_out += 1
            log.info("request_body_timed_out", path=request.url.path, received=len(body), timeout_s=self.timeout_s)
            message = f"the request body did not arrive within {self.timeout_s:g} s (NOTIFIER_REQUEST_BODY_TIMEOUT_S)"
            raise ApiError(408, "timeout", message, headers={"Connection": "close"}) from None
        except ClientDisconnect:
            self.abandoned += 1
            log.info("request_body_abandoned", path=request.url.path, received=len(body))
            raise ApiError(400, "client_disconnected", "the client left before sending its whole body") from None
        return bytes(body)

    def _busy(self) -> ApiError:
        limits = self.limits
        message = (
            f"too many request bodies in flight ({limits.bodies} bodies, {limits.bytes} bytes; "
            "NOTIFIER_MAX_CONCURRENT_BODIES, NOTIFIER_MAX_BODY_BYTES_IN_FLIGHT); retry later"
        )
        return ApiError(503, "busy", message, headers={"Retry-After": str(RETRY_AFTER_S)})

    async def parse(self, body: bytes, parse: Callable[[bytes], T]) -> T:
        """`parse(body)`: on the loop for a small body, else in the parse process (one body at a time). For a
        large body `parse` is a function of a module the parse process imports cheaply (such as
        notifier/formats/publish_body.py), and what it returns or raises is pickled back."""
        if len(body) <= PARSE_ON_LOOP_MAX_BYTES:
            return parse(body)
        try:
            return await self._parser.run(parse, body)
        except ParseProcessLost:
            log.warning("parse_process_lost")
            message = "the body could not be parsed now; retry"
            raise ApiError(503, "busy", message, headers={"Retry-After": str(RETRY_AFTER_S)}) from None

    async def start(self) -> None:
        """Start the parse process (at start-up, so that the first large body does not wait for it, nor does
        the event loop pay for its start while bodies arrive)."""
        await self._parser.start()

    async def close(self) -> None:
        """Stop the parse process (the app is shutting down)."""
        await self._parser.stop()


class ParseProcessLost(Exception):
    """The parse process ended or broke the protocol; the next parse starts a new one."""


class ParseProcess:
    """`python -m notifier.formats.publish_body`, a child process that parses one body at a time: requests and
    answers are length-prefixed pickles over its stdin and stdout (notifier.formats.publish_body.serve_parses).
    It exits when this process closes its stdin, or is gone."""

    def __init__(self) -> None:
        self._process: asyncio.subprocess.Process | None = None
        self._turn = asyncio.Lock()

    async def start(self) -> asyncio.subprocess.Process:
        process = self._process
        if process is None or process.returncode is not None:
            process = self._process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "notifier.formats.publish_body",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
            )
        return process

    async def run(self, parse: Callable[[bytes], T], body: bytes) -> T:
        async with self._turn:
            process = await self.start()
            assert process.stdin is not None and process.stdout is not None
            try:
                process.stdin.write(frame(pickle.dumps((parse, body), protocol=pickle.HIGHEST_PROTOCOL)))
                await process.stdin.drain()
                size = int.from_bytes(await process.stdout.readexactly(8), "big")
                outcome, value = pickle.loads(await process.stdout.readexactly(size))  # from our own child
            except (OSError, asyncio.IncompleteReadError) as error:
                await self.stop()
                raise ParseProcessLost(repr(error)) from None
            except BaseException:  # cancelled between a request and its answer: the pipe is out of step
                await asyncio.shield(self.stop())
                raise
        if outcome == "error":
            raise cast(BaseException, value)
        return cast(T, value)

    async def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
