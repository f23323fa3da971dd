"""The tiers hold: a `unit` test that touches the network fails, however it tries; the others may."""

from __future__ import annotations

import pytest

from tests.support import ROOT

pytest_plugins = ["pytester"]

INNER_TESTS = """
import socket
import subprocess
import sys

import pytest


def test_pure():
    assert sum(range(4)) == 6


def test_unit_binding_a_socket_and_swallowing_the_error():
    try:
        socket.socket().bind(("127.0.0.1", 0))
    except Exception:
        pass


def test_unit_whose_child_process_connects():
    code = "import socket\\ntry:\\n    socket.create_connection(('127.0.0.1', 1), 1)\\nexcept BaseException:\\n    pass"
    subprocess.run([sys.executable, "-c", code], check=False, timeout=30)


@pytest.mark.loopback
def test_loopback_may_bind():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
"""


def test_unit_tests_cannot_use_the_network_even_when_the_error_is_swallowed(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The inner session is a process of this (unit) test: let it start, its own guard applies inside.
    monkeypatch.delenv("UNIT_TEST_NETWORK_LOG")
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    pytester.makeconftest("from tests.conftest import *  # noqa: F403 - the real tier hooks and fixtures")
    markers = "".join(f"\n    {name}" for name in ("unit", "loopback", "rabbitmq", "browser", "slow", "destructive"))
    pytester.makeini(f"[pytest]\nasyncio_default_fixture_loop_scope = function\nmarkers ={markers}\n")
    pytester.makepyfile(test_inner=INNER_TESTS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-m", "unit or loopback", "-rA")
    result.assert_outcomes(passed=2, failed=2)
    result.stdout.fnmatch_lines(
        [
            "PASSED test_inner.py::test_pure",
            "PASSED test_inner.py::test_loopback_may_bind",
            "FAILED test_inner.py::test_unit_binding_a_socket_and_swallowing_the_error*",
            "FAILED test_inner.py::test_unit_whose_child_process_connects*",
        ],
        consecutive=False,
    )
    assert "is a unit test but tried the network: bind" in result.stdout.str()
    assert "('127.0.0.1', 1) in child process" in result.stdout.str()
