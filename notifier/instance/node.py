"""The running service of one instance: wires broker, hub, token verifier and sessions, and owns
their start, connection limits and graceful drain."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import time
from collections.abc import Awaitable, Mapping

import structlog
from starlette.datastructures import Headers
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket

from notifier.broker import Broker, BrokerUnreachable, create_broker
from notifier.cluster.control import ControlPlane
from notifier.cluster.handover import SessionHandOver
from notifier.connection.adopted import AdoptedSession, ParkedSession, adopt_sessions
from notifier.connection.auth import TokenVerifier
from notifier.connection.directory import SessionDirectory
from notifier.connection.hub import Hub
from notifier.connection.proxy import ApplicationProxies, ClientRequest
from notifier.connection.senders import FastPathReport, SenderClosed, choose_sender
from notifier.connection.session import Session, SessionContext, State
from notifier.connection.stream import Headers as ResponseHeaders
from notifier.connection.stream import Stream, StreamRegistry
from notifier.formats import closecodes, messages
from notifier.instance.looplag import watch_loop_lag
from notifier.limits.admission import Admission
from notifier.limits.budgets import UserBudgets
from notifier.limits.gate import client_address
from notifier.limits.origins import OriginPolicy
from notifier.limits.tokenbucket import FRAME_BUDGET_SCOPE_KEY
from notifier.settings import Settings
from notifier.stats import Stats

log = structlog.get_logger("notifier.node")

BROKER_RETRY_MAX_S = 10.0
# A paced close (see `_close_connections`) ends within this share of NOTIFIER_SHUTDOWN_TIMEOUT_S, and closes a
# slice of the connections this often. 70 %: 10,000 clients go at 714/s over 14 s of the default 20 s, slower
# than a busy peer signs resumes in (at 1,000/s they queued there: gap p99 2.6 and 8.3 s against 2.8 and 1.4 s
# in the resume storm; at 1,667/s, 5.6 and 6.6 s). The hand-over of what is left fits in the rest: sessions
# parked meanwhile go to the peers as the closes go on.
CLOSE_WITHIN = 0.7
CLOSE_TICK_S = 0.05
# While a stopping instance closes its connections, a session parked this long (its client did not come back
# at once) is pushed to the adopting peer; the parked ones are looked at this often. Short: a busy peer takes
# over sessions in bulk faster than their clients' one-by-one resumes, and it must be done before this
# instance exits (at 1.5 s, runs of 10,000 clients on a busy 2-core machine left up to 3,039 not adopted in
# time; at 0.5 s, none).
PUSH_AFTER_S = 0.5
PUSH_EVERY_S = 0.25
# Of NOTIFIER_SHUTDOWN_TIMEOUT_S (at most a quarter of it), what is kept for stopping consuming, deleting the
# queue, closing the broker connection and the server once the sessions have been handed over.
STOP_RESERVE_S = 1.5


class Node:
    """Everything one instance runs; built by `create_app`, started and stopped by its lifespan."""

    def __init__(self, settings: Settings, broker: Broker | None = None) -> None:
        self.settings = settings
        self.stats = Stats()
        self.broker = broker or create_broker(settings)
        self.hub = Hub(self.broker, self.stats)
        self.verifier = TokenVerifier(settings)
        self.origins = OriginPolicy(settings.allowed_origins)
        self.admission = Admission(
            max_connections=settings.max_connections, max_connections_per_user=settings.max_connections_per_user
        )
        self.sessions: set[Session] = set()
        # The HTTP streams (GET /sse) among them, by key, and their heartbeats.
        self.streams = StreamRegistry(self.broker.instance_id, settings.sse_heartbeat_s)
        self.directory = SessionDirectory(
            self.broker.instance_id,
            window_s=settings.resume_window_s,
            max_parked=settings.max_parked_sessions,
            max_parked_per_user=settings.max_parked_sessions_per_user or settings.max_connections_per_user,
        )
        self.user_budgets = UserBudgets(
            operations_per_s=settings.user_subscribes_per_s,
            operations_burst=settings.user_subscribes_burst,
            max_topics=settings.max_topics_per_user,
        )
        # The application's connect and subscribe proxies; their HTTP client is made in start().
        self.proxies = ApplicationProxies(settings, self.stats)
        self._session_context = SessionContext(
            settings=settings,
            hub=self.hub,
            verifier=self.verifier,
            admission=self.admission,
            budgets=self.user_budgets,
            stats=self.stats,
            directory=self.directory,
            remote_sessions=None,
            on_finished=self.sessions.discard,
            proxies=self.proxies if self.proxies.configured else None,
        )
        self._hand_over: SessionHandOver | None = None
        self._fast_path_report = FastPathReport()
        self._accepting = True
        self._connect_task: asyncio.Task[None] | None = None
        self._lag_task: asyncio.Task[None] | None = None
        self._stop_deadline = 0.0

    @property
    def ready(self) -> bool:
        return self._accepting and self.broker.ready

    @property
    def handover_requests(self) -> tuple[Mapping[str, int], Mapping[str, int]]:
        """Requests sent to take sessions over from other instances, and the sessions they asked for, by kind."""
        if self._hand_over is None:
            return {}, {}
        return self._hand_over.requests_sent, self._hand_over.sessions_asked

    async def start(self) -> None:
        """Connect to the broker; if it is not reachable yet, keep trying in the background (not ready)."""
        self._lag_task = asyncio.create_task(watch_loop_lag(self.stats.loop_lag), name="loop-lag")
        if self.settings.sse_enabled:
            self.streams.start()
        await self.proxies.start()
        try:
            await self.broker.connect(self.hub.deliver, self.tell_of_routing_gap)
        except BrokerUnreachable:  # the attempt's own line said why
            self._connect_task = asyncio.create_task(self._connect_until_up())
        except Exception as error:  # noqa: BLE001 - any failure to connect is retried, and logged
            log.warning("broker_connect_failed", error=repr(error))
            self._connect_task = asyncio.create_task(self._connect_until_up())

    async def _connect_until_up(self) -> None:
        delay = 0.5
        while True:
            await asyncio.sleep(delay)
            try:
                await self.broker.connect(self.hub.deliver, self.tell_of_routing_gap)
                return
            except BrokerUnreachable:  # the attempt's own line said why
                pass
            except Exception as error:  # noqa: BLE001
                log.warning("broker_connect_failed", error=repr(error), retry_in_s=delay)
            delay = min(delay * 2, BROKER_RETRY_MAX_S)

    async def drain(self) -> None:
        """Graceful stop: take no new events or clients, flush what was handed off, close clients with 1012.

        The whole stop, `stop()`'s broker close included, fits in NOTIFIER_SHUTDOWN_TIMEOUT_S.
        """
        if not self._accepting:
            return
        self._accepting = False
        self._stop_deadline = time.monotonic() + self.settings.shutdown_timeout_s
        if self._connect_task is not None:
            self._connect_task.cancel()
        # With other instances to hand sessions to, keep taking events while clients reconnect elsewhere: their
        # parked sessions collect them and are handed over. Otherwise take no more events from the start.
        others_alive = self._hand_over is not None and self._hand_over.others_alive()
        hand_over = others_alive and self.settings.resume_window_s > 0
        if not hand_over:
            self.directory.parking = False  # no one could resume them: sessions end with their connection
            await self._within_deadline(self.broker.stop_consuming(), "stop_consuming")
        log.info(
            "draining",
            connections=len(self.sessions),
            hand_over=hand_over,
            code=closecodes.SHUTDOWN.code,
            close_rate=self._close_rate(len(self.sessions)) if others_alive else None,
        )
        # Keep a moment of the budget for closing the broker connection.
        flush_deadline = self._stop_deadline - min(STOP_RESERVE_S, self.settings.shutdown_timeout_s / 4)
        closes_sent, all_closed = asyncio.Event(), asyncio.Event()
        adopters = self._hand_over.adopters() if hand_over and self._hand_over is not None else ()
        pusher = (
            asyncio.create_task(self._push_parked_sessions(adopters, closes_sent, all_closed, flush_deadline))
            if adopters
            else None
        )
        await self._close_connections(paced=others_alive)
        closes_sent.set()
        while self.sessions and time.monotonic() < flush_deadline:
            await asyncio.sleep(0.05)
        if self.sessions:
            log.warning("drain_timeout", connections=len(self.sessions))
        all_closed.set()
        if hand_over:
            pushed = await pusher if pusher is not None else 0
            while self.directory.parked_count and time.monotonic() < flush_deadline:
                await asyncio.sleep(0.05)
            log.info("sessions_handed_over", pushed=pushed, left=self.directory.parked_count, adopters=list(adopters))
            if adopters:
                await self._within_deadline(self._announce_moved(adopters), "announce_moved")
            await self._within_deadline(self.broker.stop_consuming(), "stop_consuming")
        # Last: RabbitMQ spends seconds removing thousands of bindings, and the clients are closed sooner without
        # it competing for the CPU; it finishes after this process has left.
        await self._delete_queue()

    def _close_rate(self, connections: int) -> float:
        """Connections closed per second: NOTIFIER_DRAIN_CLOSE_RATE, or faster when that would not close them
        all within CLOSE_WITHIN of the shutdown timeout."""
        rate = self.settings.drain_close_rate
        return max(rate, connections / (self.settings.shutdown_timeout_s * CLOSE_WITHIN)) if rate else math.inf

    async def _close_connections(self, paced: bool) -> None:
        """Close every connection with 1012. `paced` (another instance takes them): a slice every CLOSE_TICK_S
        at the close rate, since clients reconnect at once, and a peer given thousands of handshakes in the
        same second overflows its listen queue and keeps them waiting for seconds."""
        sessions = list(self.sessions)
        rate = self._close_rate(len(sessions)) if paced else math.inf
        per_tick = max(1, len(sessions) if math.isinf(rate) else math.ceil(rate * CLOSE_TICK_S))
        for start in range(0, len(sessions), per_tick):
            if start:
                await asyncio.sleep(CLOSE_TICK_S)
            for session in sessions[start : start + per_tick]:
                session.close(closecodes.SHUTDOWN)

    async def _push_parked_sessions(
        self, adopters: tuple[str, ...], closes_sent: asyncio.Event, all_closed: asyncio.Event, deadline: float
    ) -> int:
        """Ask `adopters` (the live peers) to adopt the sessions parked here, each its share, so that clients that
        come back after this instance is gone still resume. While connections are being closed, each session
        parked for PUSH_AFTER_S (its client did not come back at once: the peers' work is spread over the drain
        rather than left to its end); from PUSH_AFTER_S after the last close was sent, every one as soon as it
        is parked; once every connection is gone, every one left. Returns how many were pushed."""
        assert self._hand_over is not None
        loop = asyncio.get_running_loop()
        pushed: set[str] = set()
        pushes: set[asyncio.Task[None]] = set()
        last_close_sent: float | None = None
        while True:
            final = all_closed.is_set()
            if last_close_sent is None and closes_sent.is_set():
                last_close_sent = loop.time()
            waited = last_close_sent is not None and loop.time() - last_close_sent >= PUSH_AFTER_S
            parked_before = loop.time() - (0.0 if final or waited else PUSH_AFTER_S)
            sessions: list[ParkedSession] = [
                (session.session_id, session.user, sorted(session.topics))
                for session in self.directory.parked_since(parked_before)
                if isinstance(session, Session | AdoptedSession)  # one it adopted goes on to a live peer
                and session.session_id is not None
                and session.user is not None
                and session.session_id not in pushed
            ]
            if sessions:
                pushed.update(parked[0] for parked in sessions)
                log.info("sessions_pushed", sessions=len(sessions), last=final)
                until = loop.time() + max(0.0, deadline - time.monotonic())
                push = asyncio.create_task(self._hand_over.push_parked(adopters, sessions, until))
                pushes.add(push)
                push.add_done_callback(pushes.discard)
            if final:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(all_closed.wait(), PUSH_EVERY_S)
        if pushes:
            await asyncio.wait(pushes)
        return len(pushed)

    async def _announce_moved(self, adopters: tuple[str, ...]) -> None:
        assert self._hand_over is not None
        await self._hand_over.announce_moved(adopters)

    async def _delete_queue(self) -> None:
        """With resume on, what is left in the queue once consuming stopped was for sessions that moved or
        ended: delete the queue, and all its bindings with it in one request. With resume off, the queue keeps
        what was not consumed until it expires (docs/guarantees.md)."""
        if self.settings.resume_window_s > 0:
            await self._within_deadline(self.broker.delete_queue(), "delete_queue")

    def attach_control(self, control: ControlPlane) -> None:
        """Resume sessions held by other instances, and hand ours over, through `control`."""
        self._hand_over = SessionHandOver(
            control, self.directory, self.hub.caught_up, timeout_s=self.settings.resume_timeout_s
        )
        remote = self._hand_over
        self._hand_over.adopt = lambda sessions: adopt_sessions(self._session_context, remote, sessions)
        self._session_context = dataclasses.replace(self._session_context, remote_sessions=self._hand_over)

    async def stop(self) -> None:
        await self.drain()
        self.directory.end_all_parked()
        await self._within_deadline(self.directory.wait_released(), "release_parked_sessions")
        await self._within_deadline(self.broker.close(), "broker_close")
        await self.proxies.stop()
        await self.streams.stop()
        if self._lag_task is not None:
            self._lag_task.cancel()

    async def _within_deadline(self, step: Awaitable[None], name: str) -> None:
        remaining = max(0.1, self._stop_deadline - time.monotonic())
        try:
            await asyncio.wait_for(step, remaining)
        except TimeoutError:
            log.warning("shutdown_step_timed_out", step=name)

    # Connections.

    async def serve(self, websocket: WebSocket) -> None:
        """Serve one WebSocket from handshake to close."""
        origin = websocket.headers.get("origin")
        if not self.origins.allows(origin, websocket.headers.get("host")):
            log.info("origin_refused", origin=origin[:200] if origin else None)
            await self.origins.refuse(websocket)
            return
        if not self._accepting:
            await websocket.accept()
            await websocket.close(closecodes.SHUTDOWN.code, closecodes.SHUTDOWN.reason)
            return
        await websocket.accept()
        task = asyncio.current_task()
        assert task is not None
        path = self.settings.write_path
        sender = choose_sender(websocket.scope, websocket.send, task.cancel, path)
        self._fast_path_report.note(sender, websocket.scope, path)
        budget = websocket.scope.get(FRAME_BUDGET_SCOPE_KEY)
        client_request = None
        if self.proxies.configured:  # the handshake's allow-listed headers, for the application's proxies
            address = websocket.client.host if websocket.client else None
            client_request = ClientRequest.from_handshake(
                websocket.headers.items(), self.proxies.forwarded_headers, address
            )
        session = Session(
            websocket.receive, sender, self._session_context, frame_budget=budget, client_request=client_request
        )
        self.sessions.add(session)
        token = websocket.query_params.get("token")
        await session.run(messages.Auth(token) if token is not None else None)

    async def serve_stream(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        *,
        token: str | None,
        resume: messages.Resume | None,
        headers: ResponseHeaders,
    ) -> None:
        """Serve one HTTP stream (GET /sse) from request to end: its session signs in with the request's token
        (or through the connect proxy without one) and resume point. The caller has checked the origin and the
        resume point and passed the admission gate; `headers` go on every answer (the page's CORS headers)."""
        stream = Stream(
            scope,
            receive,
            send,
            key=self.streams.new_key(),
            registry=self.streams,
            heartbeat_s=self.settings.sse_heartbeat_s,
            stall_timeout_s=self.settings.write_stall_timeout_s,
            headers=headers,
            direct=self.settings.write_path == "auto",
        )
        if not self._accepting:
            with contextlib.suppress(SenderClosed):
                await stream.close(closecodes.SHUTDOWN)
            return
        client_request = None
        if self.proxies.configured:  # the request's allow-listed headers, for the application's proxies
            client_request = ClientRequest.from_handshake(
                Headers(scope=scope).items(), self.proxies.forwarded_headers, client_address(scope)
            )
        session = Session(stream.receive, stream, self._session_context, client_request=client_request)
        stream.session = session
        self.sessions.add(session)
        try:
            await session.run(messages.Auth(token, resume=resume))
        finally:
            self.streams.discard(stream)
            stream.session = None

    def command_stream(self, key: str, body: bytes) -> str:
        """Give one client frame to the stream `key` if this instance holds it open: "accepted", "too_big",
        "rate_limited" (the stream is closed with 4004) or "unknown_stream" (see `Session.feed`)."""
        stream = self.streams.find(key)
        session = stream.session if stream is not None else None
        if session is None:
            return "unknown_stream"
        fed = session.feed(body)
        return "unknown_stream" if fed == "closed" else fed

    def end_stream(self, key: str) -> bool:
        """The client of the stream `key` said goodbye (DELETE): its session ends, not parked. False when this
        instance holds no open stream of that key."""
        stream = self.streams.find(key)
        session = stream.session if stream is not None else None
        if session is None or session.state is not State.OPEN:
            return False
        session.end_by_client()
        return True

    def tell_of_routing_gap(self, reason: str) -> None:
        """Routing was rebuilt on a new queue: events of any topic held here may have been lost meanwhile. Every
        open connection is told at once (`resync`); parked sessions end, so a resume answers `recovered: false`
        instead of a replay with a hole in it."""
        frame = messages.resync("routing_lost")
        told = 0
        for session in self.sessions:
            if session.state is State.OPEN:
                session.reply(frame)
                told += 1
        parked = self.directory.parked_sessions()
        for resumable in parked:
            self.directory.end(resumable)
        self.stats.resyncs_sent += told
        log.warning("routing_gap_told", reason=reason, resync_sent=told, parked_sessions_ended=len(parked))

    def sessions_of(self, user: str) -> list[Session]:
        """The open, authenticated connections of `user` on this instance."""
        return [session for session in self.sessions if session.user == user and session.state is State.OPEN]

    def parked_sessions_of(self, user: str) -> list[Session]:
        """The parked sessions of `user` on this instance (their connection is gone; a resume may claim them)."""
        parked = self.directory.parked_sessions()
        return [session for session in parked if isinstance(session, Session) and session.user == user]
