"""`notifier dev` beside `notifier publish` and `notifier token`: the state it leaves them is private, never
written through a symlink, points at the right server, and is gone when it exits."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import stat
from pathlib import Path

import pytest
import websockets

from tests.processes import NotifierProcess, StartNotifier, notifier_env, run_cli, run_command
from tests.support import free_port, receive_json

# Each test runs `notifier dev` on loopback.
pytestmark = pytest.mark.loopback


def private_env(tmp_path: Path) -> dict[str, str]:
    """A temp dir of this test's own (so no other run's state is seen) and no runtime dir."""
    return {"TMPDIR": str(tmp_path), "XDG_RUNTIME_DIR": ""}


def banner_of(process: NotifierProcess) -> str:
    """What `notifier dev` printed: it is out, flushed, before the server listens."""
    banner = process.output()
    assert "API key:" in banner, banner
    return banner


async def test_publish_and_token_find_the_dev_server_on_another_port_with_no_flags(
    tmp_path: Path, start_notifier: StartNotifier
) -> None:
    env = private_env(tmp_path)
    port = free_port()
    # A stale state file of a dev server that is gone (a crashed run's): its process no longer exists.
    state_dir = tmp_path / f"notifier-{os.getuid()}"
    state_dir.mkdir(mode=0o700)
    stale = {"url": "http://127.0.0.1:1", "port": 1, "pid": 2**22 + 1, "jwt_secret": "s" * 40, "api_key": "stale"}
    (state_dir / "dev-1.json").write_text(json.dumps(stale))

    process = await start_notifier("dev", "--port", str(port), env=notifier_env(**env), port=port)
    banner = banner_of(process)
    state_file = state_dir / f"dev-{port}.json"
    mode = os.lstat(state_file).st_mode
    assert stat.S_ISREG(mode) and stat.S_IMODE(mode) == 0o600
    assert stat.S_IMODE(os.lstat(state_dir).st_mode) == 0o700

    token = run_cli("token", "demo", env=env)
    assert token.returncode == 0, token.stderr
    async with websockets.connect(f"ws://127.0.0.1:{port}/ws?token={token.stdout.strip()}") as ws:
        assert (await receive_json(ws))["type"] == "welcome"
        no_flags = await asyncio.to_thread(run_cli, "publish", "user.demo", '{"n": 1}', env=env)
        assert no_flags.returncode == 0, no_flags.stderr
        assert (await receive_json(ws))["data"] == {"n": 1}
        with_url = await asyncio.to_thread(
            run_cli, "publish", "--url", f"http://127.0.0.1:{port}", "user.demo", '{"n": 2}', env=env
        )
        assert with_url.returncode == 0, with_url.stderr
        assert (await receive_json(ws))["data"] == {"n": 2}
        # The banner's command, run as printed (from this Python, as the banner names it).
        line = re.search(r"Publish:\s+(.+)", banner)
        assert line is not None, banner
        command = shlex.split(line.group(1))
        assert "--url" not in command, "the only dev server running is found without it"
        printed = await asyncio.to_thread(run_command, command, notifier_env(**env))
        assert printed.returncode == 0, printed.stderr
        assert (await receive_json(ws))["data"] == {"hello": "world"}
    assert await process.stop() == 0
    assert not state_file.exists(), "notifier dev removes its state file when it exits"


async def test_a_planted_symlink_is_never_written_through(tmp_path: Path, start_notifier: StartNotifier) -> None:
    env = private_env(tmp_path)
    port = free_port()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    state_dir = tmp_path / f"notifier-{os.getuid()}"
    state_dir.mkdir(mode=0o700)
    (state_dir / f"dev-{port}.json").symlink_to(victim)
    process = await start_notifier("dev", "--port", str(port), env=notifier_env(**env), port=port)
    banner_of(process)
    assert victim.read_text() == "precious"
    assert not (state_dir / f"dev-{port}.json").is_symlink()


@pytest.mark.parametrize("kind", ["symlink", "open"])
def test_dev_refuses_a_state_directory_that_is_not_private(tmp_path: Path, kind: str) -> None:
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o700)
    state_dir = tmp_path / f"notifier-{os.getuid()}"
    if kind == "symlink":
        state_dir.symlink_to(target)
    else:
        state_dir.mkdir()
        state_dir.chmod(0o777)
    result = run_cli("dev", "--port", str(free_port()), env=private_env(tmp_path), timeout=30)
    assert result.returncode == 2
    assert "is not a directory private to this user" in result.stderr
    assert list(target.iterdir()) == []


async def test_the_banner_names_the_url_only_when_another_dev_server_runs(
    tmp_path: Path, start_notifier: StartNotifier
) -> None:
    env = private_env(tmp_path)
    # Another dev server "running": its state file names this (live) process.
    state_dir = tmp_path / f"notifier-{os.getuid()}"
    state_dir.mkdir(mode=0o700)
    other = {"url": "http://127.0.0.1:9103", "port": 9103, "pid": os.getpid(), "jwt_secret": "s" * 40, "api_key": "k"}
    (state_dir / "dev-9103.json").write_text(json.dumps(other))
    port = free_port()
    process = await start_notifier("dev", "--port", str(port), env=notifier_env(**env), port=port)
    line = re.search(r"Publish:\s+(.+)", banner_of(process))
    assert line is not None
    assert f"--url http://127.0.0.1:{port} " in line.group(1)
    assert await process.stop() == 0
