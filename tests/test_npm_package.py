"""notifier.js as the npm package `notifier-push-client` (notifier/static/package.json), used as its README says.

`npm pack` makes the tarball, a consumer project installs it with npm, and its programs (tests/npm/consumer)
are bundled by esbuild, type-checked by `tsc --strict` as a page and as a Node program, and run in Node 18, 20
and 22 against a real `notifier serve` on RabbitMQ. The tools come from tests/npm (`.ci/setup-npm`).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import tarfile
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

import notifier
from tests.npm_tools import CONSUMERS, NODE_MODULES, NODE_VERSIONS, PACKAGE_DIR, NpmTools
from tests.processes import StartNotifier, notifier_env
from tests.support import API_KEY, ROOT, free_port, token_for

PACKAGE_NAME = "notifier-push-client"
PACKAGE_FILES = {"package.json", "README.md", "notifier.js", "notifier.d.ts"}
NO_WEBSOCKET = "NotifierClient: no WebSocket implementation"
LINE_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class Packed:
    tarball: Path
    files: dict[str, bytes]
    """Each file of the tarball (its path under `package/`) and its content."""


@pytest.fixture(scope="session")
def packed(npm_tools: NpmTools, tmp_path_factory: pytest.TempPathFactory) -> Packed:
    """The tarball `npm pack` makes of notifier/static, as `npm publish` would upload it."""
    out = tmp_path_factory.mktemp("pack")
    result = npm_tools.run(npm_tools.npm, "pack", PACKAGE_DIR, "--pack-destination", out, "--json", cwd=out)
    assert result.returncode == 0, result.stderr
    (info,) = json.loads(result.stdout)
    tarball = out / info["filename"]
    files = {}
    with tarfile.open(tarball) as archive:
        for member in archive.getmembers():
            content = archive.extractfile(member)
            if content is not None:
                files[member.name.removeprefix("package/")] = content.read()
    return Packed(tarball, files)


@pytest.fixture(scope="session")
def consumer(npm_tools: NpmTools, packed: Packed, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project that installed the tarball with `npm install`, as a user does, with the consumer programs of
    tests/npm/consumer, and `ws` and the type packages tsc reads linked in from tests/npm."""
    project = tmp_path_factory.mktemp("consumer")
    (project / "package.json").write_text(json.dumps({"name": "consumer", "private": True, "type": "module"}))
    result = npm_tools.run(
        npm_tools.npm, "install", "--offline", "--no-audit", "--no-fund", packed.tarball, cwd=project
    )
    assert result.returncode == 0, result.stderr
    for name in ("ws", "@types"):
        (project / "node_modules" / name).symlink_to(NODE_MODULES / name, target_is_directory=True)
    for program in CONSUMERS.iterdir():
        shutil.copy(program, project)
    return project


def test_package_version_is_the_python_package_version() -> None:
    """One version for the service and its client: pyproject.toml's, which `notifier.__version__` repeats."""
    package = json.loads((PACKAGE_DIR / "package.json").read_text())
    python_version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert package["name"] == PACKAGE_NAME
    assert package["version"] == python_version == notifier.__version__, (
        f"notifier/static/package.json has {package['version']}, pyproject.toml {python_version}, "
        f"notifier/__init__.py {notifier.__version__}: give all three the release's version"
    )


def test_npm_pack_ships_the_served_client_its_types_and_readme_only(packed: Packed) -> None:
    assert set(packed.files) == PACKAGE_FILES
    for name in ("notifier.js", "notifier.d.ts", "README.md"):
        # One source: the package is the very files the service serves at /static.
        assert packed.files[name] == (PACKAGE_DIR / name).read_bytes(), name
    manifest = json.loads(packed.files["package.json"])
    assert manifest["type"] == "module"
    entry = manifest["exports"]["."]
    assert list(entry) == ["types", "default"], "resolvers take the first condition that matches: types first"
    shipped = {f"./{name}" for name in packed.files}
    assert {entry["types"], entry["default"], manifest["types"], manifest["main"]} <= shipped
    assert "dependencies" not in manifest
    assert "react" not in json.dumps(manifest).lower()


def test_esbuild_bundles_a_page_through_the_package_exports_and_leaves_out_what_it_does_not_import(
    npm_tools: NpmTools, consumer: Path
) -> None:
    bundle = ["--bundle", "--format=esm", "--platform=browser", "--minify"]
    page = npm_tools.run(
        npm_tools.esbuild, "page.js", *bundle, "--outfile=page.bundle.js", "--metafile=page.meta.json", cwd=consumer
    )
    assert page.returncode == 0, page.stderr
    inputs = json.loads((consumer / "page.meta.json").read_text())["inputs"]
    assert f"node_modules/{PACKAGE_NAME}/notifier.js" in inputs
    assert "options.url is required" in (consumer / "page.bundle.js").read_text()

    small = npm_tools.run(npm_tools.esbuild, "backoff-only.js", *bundle, "--outfile=backoff.bundle.js", cwd=consumer)
    assert small.returncode == 0, small.stderr
    assert "options.url is required" not in (consumer / "backoff.bundle.js").read_text(), "the client was bundled"
    ran = npm_tools.run(npm_tools.node, "backoff.bundle.js", cwd=consumer)
    assert ran.returncode == 0, ran.stderr
    assert 0 <= float(ran.stdout) < 4000  # backoffDelay(3, 500, 20000): under min(20000, 500 * 2**3)


def jsx_blocks(markdown: Path) -> list[str]:
    return re.findall(r"```jsx\n(.*?)```", markdown.read_text(), flags=re.DOTALL)


def test_the_react_example_is_one_in_both_docs_and_bundles(npm_tools: NpmTools, consumer: Path) -> None:
    """The hook of docs/client.md and the npm README: the same code, and esbuild bundles it (React left out)."""
    (example,) = jsx_blocks(ROOT / "docs" / "client.md")
    assert jsx_blocks(PACKAGE_DIR / "README.md") == [example]
    (consumer / "hook.jsx").write_text(example)
    result = npm_tools.run(
        npm_tools.esbuild,
        "hook.jsx",
        "--bundle",
        "--format=esm",
        "--external:react",
        "--outfile=hook.bundle.js",
        "--metafile=hook.meta.json",
        cwd=consumer,
    )
    assert result.returncode == 0, result.stderr
    assert f"node_modules/{PACKAGE_NAME}/notifier.js" in json.loads((consumer / "hook.meta.json").read_text())["inputs"]


@pytest.mark.parametrize("program", ["browser", "node"], ids=["page with the DOM lib", "Node with ws, no DOM lib"])
def test_tsc_strict_checks_a_consumer_against_the_package_types(
    npm_tools: NpmTools, consumer: Path, program: str
) -> None:
    result = npm_tools.run(npm_tools.node, npm_tools.tsc, "-p", f"tsconfig.{program}.json", "--listFiles", cwd=consumer)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"node_modules/{PACKAGE_NAME}/notifier.d.ts" in result.stdout


def node_env(**variables: str) -> dict[str, str]:
    """This process's environment without NODE_OPTIONS (a flag there would change the runtime under test)."""
    return {key: value for key, value in os.environ.items() if key != "NODE_OPTIONS"} | variables


@pytest.mark.parametrize("major", [18, 20])
def test_node_without_a_global_websocket_is_told_to_pass_ws(npm_tools: NpmTools, consumer: Path, major: int) -> None:
    result = npm_tools.run(
        npm_tools.runtimes[major],
        "receive.mjs",
        cwd=consumer,
        env=node_env(NOTIFIER_URL="ws://127.0.0.1:9/ws", NOTIFIER_TOKEN="unused", TOPIC="news.npm"),
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert NO_WEBSOCKET in result.stderr
    assert "WebSocket option" in result.stderr
    assert "from 'ws'" in result.stderr


@pytest.mark.loopback
@pytest.mark.parametrize("major", NODE_VERSIONS)
def test_sockets_closed_while_connecting_do_not_crash_node_with_ws(
    npm_tools: NpmTools, consumer: Path, major: int
) -> None:
    """`ws` emits 'error' when a socket still connecting is closed; the client keeps a listener for it."""
    result = npm_tools.run(npm_tools.runtimes[major], "detach.mjs", cwd=consumer, env=node_env(), timeout=30)
    assert result.returncode == 0, result.stderr
    states = json.loads(result.stdout)["states"]
    assert states.count("reconnecting") >= 2
    assert states[-1] == "closed"


@dataclass(frozen=True)
class Run:
    major: int
    node_args: tuple[str, ...] = ()
    use_ws: bool = False
    bundled: bool = False


RUNS = {
    "Node 18 with ws": Run(18, use_ws=True),
    "Node 20 with ws": Run(20, use_ws=True),
    "Node 20 --experimental-websocket": Run(20, node_args=("--experimental-websocket",)),
    "Node 22 global WebSocket": Run(22),
    "Node 22 with ws": Run(22, use_ws=True),
    "Node 22 esbuild bundle": Run(22, bundled=True),
}


async def next_line(process: asyncio.subprocess.Process, key: str, seen: list[dict[str, Any]]) -> dict[str, Any]:
    """The program's next JSON line that has `key`; the lines before it are kept in `seen`."""
    assert process.stdout is not None
    while True:
        raw = await asyncio.wait_for(process.stdout.readline(), LINE_TIMEOUT_S)
        if not raw:
            stderr = (await process.stderr.read()).decode() if process.stderr else ""
            raise AssertionError(f"the program ended before a {key!r} line; it printed {seen}:\n{stderr}")
        line: dict[str, Any] = json.loads(raw)
        seen.append(line)
        if key in line:
            return line


@pytest.mark.parametrize("run", list(RUNS.values()), ids=list(RUNS))
async def test_node_program_receives_an_event_from_a_real_server_and_exits_after_close(
    npm_tools: NpmTools, consumer: Path, start_notifier: StartNotifier, exchange: str, run: Run
) -> None:
    program = "receive.mjs"
    if run.bundled:
        program = "receive.bundle.mjs"
        bundle = await asyncio.to_thread(
            npm_tools.run,
            npm_tools.esbuild,
            "receive.mjs",
            "--bundle",
            "--format=esm",
            "--platform=node",
            "--external:ws",
            f"--outfile={program}",
            cwd=consumer,
        )
        assert bundle.returncode == 0, bundle.stderr
    port = free_port()
    server = await start_notifier("serve", env=notifier_env(port, exchange), port=port)
    env = node_env(
        NOTIFIER_URL=server.ws_url,
        NOTIFIER_TOKEN=token_for("ada", ["news.*"]),
        TOPIC="news.npm",
        USE_WS="1" if run.use_ws else "0",
    )
    process = await asyncio.create_subprocess_exec(
        str(npm_tools.runtimes[run.major]),
        *run.node_args,
        program,
        cwd=consumer,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    seen: list[dict[str, Any]] = []
    try:
        await next_line(process, "subscribed", seen)
        async with httpx.AsyncClient(base_url=server.http_url, timeout=5) as http:
            answer = await http.post(
                "/api/publish",
                json={"topic": "news.npm", "data": {"text": f"to Node {run.major}"}, "id": f"npm-{run.major}"},
                headers={"Authorization": f"Bearer {API_KEY}"},
            )
        assert answer.status_code == 202, answer.text
        event = (await next_line(process, "event", seen))["event"]
        assert (event["topic"], event["id"], event["data"]) == (
            "news.npm",
            f"npm-{run.major}",
            {"text": f"to Node {run.major}"},
        )
        # The program closed the client at the event and does nothing more: Node ends when nothing is left.
        assert await asyncio.wait_for(process.wait(), 10) == 0
        assert not [line for line in seen if "error" in line], seen
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
