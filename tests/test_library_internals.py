"""The private parts of libraries that notifier reaches are still there, so an upgrade that renames or removes
one fails here, naming it, instead of silently falling back to a slow path or a drain that does nothing.

Each reach lives in one module per library: notifier/broker/aiormq_internals.py, notifier/broker/failover.py
(aio-pika), notifier/runtime/uvicorn_protocols.py and notifier/runtime/asyncio_signals.py.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import textwrap

import aio_pika
import aiormq
import pytest
import uvicorn

from notifier.broker import aiormq_internals, failover
from notifier.runtime import asyncio_signals, uvicorn_protocols


def assigned_attributes(cls: type) -> set[str]:
    """The attributes a class and its bases set on `self` in any method, plus their class attributes."""
    names: set[str] = set()
    for klass in inspect.getmro(cls):
        if klass is object:
            continue
        names.update(vars(klass))
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        for node in ast.walk(ast.parse(source)):
            targets: list[ast.expr] = []
            if isinstance(node, ast.Assign):
                targets = node.targets
            elif isinstance(node, ast.AnnAssign | ast.AugAssign):
                targets = [node.target]
            for target in targets:
                for item in ast.walk(target):
                    if isinstance(item, ast.Attribute) and isinstance(item.value, ast.Name) and item.value.id == "self":
                        names.add(item.attr)
    return names


@pytest.mark.parametrize("name", aiormq_internals.CHANNEL_INTERNALS)
def test_aiormq_channel_has(name: str) -> None:
    assert name in assigned_attributes(aiormq.Channel), f"aiormq.Channel no longer has {name!r}"


@pytest.mark.parametrize("name", aiormq_internals.CONNECTION_INTERNALS)
def test_aiormq_connection_has(name: str) -> None:
    assert name in assigned_attributes(aiormq.Connection), f"aiormq.Connection no longer has {name!r}"


@pytest.mark.parametrize("name", aiormq_internals.QUEUE_INTERNALS)
def test_asyncio_queue_has(name: str) -> None:
    assert name in vars(asyncio.Queue(maxsize=3)), f"asyncio.Queue no longer has {name!r}"


def test_aio_pika_robust_connection_makes_each_attempt_in_the_method_failover_overrides() -> None:
    assert callable(getattr(aio_pika.RobustConnection, failover.CONNECT_ATTEMPT, None)), (
        f"aio_pika.RobustConnection no longer has {failover.CONNECT_ATTEMPT!r}: NOTIFIER_AMQP_URL's list of nodes "
        "would be tried no more"
    )
    assert failover.CONNECT_ATTEMPT in vars(failover.FailoverConnection)


def test_asyncio_loop_keeps_signal_handlers_where_the_drain_reads_them() -> None:
    loop = asyncio.new_event_loop()
    try:
        assert hasattr(loop, asyncio_signals.SIGNAL_HANDLERS), (
            f"the asyncio loop has no {asyncio_signals.SIGNAL_HANDLERS}"
        )
        handle = asyncio.Handle(print, (), loop)
        for name in asyncio_signals.HANDLE_INTERNALS:
            assert hasattr(handle, name), f"asyncio.Handle no longer has {name!r}"
    finally:
        loop.close()


def test_uvicorn_server_captures_signals_where_the_stop_clears_them() -> None:
    assert "_captured_signals" in assigned_attributes(uvicorn.Server), "uvicorn.Server has no _captured_signals"


PROTOCOLS = [uvicorn_protocols.LimitedHttpProtocol, uvicorn_protocols.BackpressuredWebSocketProtocol]


@pytest.mark.parametrize("cls", PROTOCOLS, ids=lambda cls: cls.__name__)
def test_uvicorn_protocol_methods_overridden_still_exist_in_uvicorn(cls: type) -> None:
    """A method we override that uvicorn renamed would never be called: our limit would be gone."""
    base = cls.__mro__[1]
    ours = {name for name, value in vars(cls).items() if inspect.isfunction(value) and not name.startswith("__")}
    helpers = {name for name in ours if not hasattr(base, name)}
    # Our own helpers are private (underscore) and called only from our code; every public name overrides uvicorn's.
    missing = sorted(name for name in helpers if not name.startswith("_"))
    assert missing == [], f"{base.__module__}.{base.__name__} no longer has {missing}"


@pytest.mark.parametrize("cls", PROTOCOLS, ids=lambda cls: cls.__name__)
def test_uvicorn_protocol_attributes_read_still_exist_in_uvicorn(cls: type) -> None:
    """Every `self.<name>` our subclass reads is set by our class or by uvicorn's."""
    source = textwrap.dedent(inspect.getsource(cls))
    read = {
        node.attr
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self"
    }
    known = assigned_attributes(cls) | {name for name in dir(cls)}
    missing = sorted(read - known)
    assert missing == [], f"{cls.__mro__[1].__name__} no longer sets {missing}"


@pytest.mark.parametrize("name", uvicorn_protocols.REQUEST_CYCLE_INTERNALS)
def test_uvicorn_request_cycle_has_what_an_http_stream_sends_through(name: str) -> None:
    from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

    assert name in assigned_attributes(RequestResponseCycle), f"RequestResponseCycle no longer has {name!r}"


@pytest.mark.parametrize("name", uvicorn_protocols.FLOW_CONTROL_INTERNALS)
def test_uvicorn_flow_control_says_when_writes_are_paused(name: str) -> None:
    from uvicorn.protocols.http.flow_control import FlowControl

    assert name in assigned_attributes(FlowControl), f"FlowControl no longer has {name!r}"


def test_uvicorn_http_send_waits_only_while_writes_are_paused() -> None:
    """DirectSend runs uvicorn's send to its end in one step: that holds while its only await is the drain."""
    from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

    source = textwrap.dedent(inspect.getsource(RequestResponseCycle.send))
    awaits = [ast.unparse(node) for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Await)]
    assert awaits == ["await self.flow.drain()"], awaits
    assert "if self.flow.write_paused and not self.disconnected:" in source


@pytest.mark.parametrize("name", aiormq_internals.PAMQP_INTERNALS)
def test_pamqp_decode_has(name: str) -> None:
    import pamqp.decode

    table = getattr(pamqp.decode, name, None)
    assert isinstance(table, dict) and "timestamp" in table, f"pamqp.decode no longer has {name!r}['timestamp']"
