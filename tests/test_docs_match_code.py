"""What the docs and the JavaScript client say agrees with the code: close codes, and the tests the guarantees cite."""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from notifier.formats import closecodes

ROOT = Path(__file__).resolve().parent.parent
PROTOCOL = ROOT / "docs" / "protocol.md"
GUARANTEES = ROOT / "docs" / "guarantees.md"
CLIENT_JS = ROOT / "notifier" / "static" / "notifier.js"
CLIENT_DTS = ROOT / "notifier" / "static" / "notifier.d.ts"
FAKE_WEBSOCKET = ROOT / "tests" / "js" / "fake-websocket.mjs"

# Closes the WebSocket layer (uvicorn) sends on malformed framing; notifier's code never chooses them.
WEBSOCKET_LAYER_CODES = {1002: False}
# Codes the browser reports for closes the server did not send (normal, page leaving, line lost).
BROWSER_CODES = {1000, 1001, 1006}

SERVER_CODES = {reason.code: reason.reconnect for reason in closecodes.ALL}


def documented_close_codes() -> dict[int, bool]:
    """docs/protocol.md's close code table: code -> whether the client should reconnect."""
    section = PROTOCOL.read_text().split("### Close codes", 1)[1].split("\n## ", 1)[0]
    table: dict[int, bool] = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].isdigit():
            table[int(cells[0])] = not cells[2].startswith(("stop", "fix the client"))
    return table


def close_code_object(source: str, opening: str) -> dict[str, int]:
    """NAME: code pairs of the `CloseCode` object that starts at `opening` in a JS or TS source."""
    body = source.split(opening, 1)[1].split("}", 1)[0]
    return {name: int(code) for name, code in re.findall(r"(\w+):\s*(\d+)", body)}


def test_protocol_doc_lists_every_close_code_the_server_sends_with_its_reconnect_rule() -> None:
    assert documented_close_codes() == SERVER_CODES | WEBSOCKET_LAYER_CODES


def test_js_client_and_its_types_name_the_same_close_codes_as_the_server() -> None:
    js = close_code_object(CLIENT_JS.read_text(), "export const CloseCode = Object.freeze({")
    dts = close_code_object(CLIENT_DTS.read_text(), "export declare const CloseCode: Readonly<{")
    assert js == dts
    assert set(js.values()) == set(SERVER_CODES) | BROWSER_CODES


# Drives notifier.js on a fake socket: each close code once with a fixed token, once with getToken; prints the
# state the client is in right after the close.
CLOSE_PROBE = """
const { NotifierClient } = await import(process.argv[1]);
const { FakeServer, flush } = await import(process.argv[2]);
const outcome = {};
for (const code of JSON.parse(process.argv[3])) {
  for (const mode of ['token', 'getToken']) {
    const server = new FakeServer();
    const options = { url: 'ws://notifier.test/ws', WebSocket: server.WebSocket, pingInterval: 1e9 };
    if (mode === 'token') options.token = 'tok';
    else options.getToken = () => 'tok';
    const client = new NotifierClient(options);
    client.on('error', () => {});
    client.connect();
    await flush();
    await flush();
    server.socket.welcome();
    server.socket.serverClose(code, 'drift test');
    outcome[`${code} ${mode}`] = client.state;
    client.close();
  }
}
console.log(JSON.stringify(outcome));
process.exit(0);
"""


def test_js_client_reconnects_exactly_after_the_codes_the_server_marks_reconnect() -> None:
    """Reconnect means: a client that can fetch a fresh token comes back. Terminal means: one that would send
    the same input again (a fixed token) stops."""
    node = shutil.which("node")
    assert node, "node is needed to check notifier.js (the JavaScript client tests need it too)"
    result = subprocess.run(
        [
            node,
            "--input-type=module",
            "-e",
            CLOSE_PROBE,
            CLIENT_JS.as_uri(),
            FAKE_WEBSOCKET.as_uri(),
            json.dumps(sorted(SERVER_CODES)),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout)
    for code, reconnect in SERVER_CODES.items():
        if reconnect:
            assert outcome[f"{code} getToken"] == "reconnecting", (code, outcome)
        else:
            assert outcome[f"{code} token"] == "closed", (code, outcome)


def cited_tests() -> list[tuple[str, str | None]]:
    """(file, test) pairs docs/guarantees.md names; `::name` refers to the file cited before it on its line."""
    cited: list[tuple[str, str | None]] = []
    for line in GUARANTEES.read_text().splitlines():
        current: str | None = None
        for reference in re.findall(r"`((?:tests/[\w/]+\.py)?(?:::[\w\[\]-]+)?)`", line):
            path, _, name = reference.partition("::")
            if path:
                current = path
            assert current, f"{reference} names no file: {line}"
            cited.append((current, name or None))
    return cited


def test_guarantees_cite_tests() -> None:
    """The parser below must find the citations, or the next test would check nothing."""
    cited = cited_tests()
    assert len({path for path, _ in cited}) >= 10
    assert sum(name is not None for _, name in cited) >= 20


@pytest.mark.parametrize(("path", "name"), cited_tests(), ids=lambda value: str(value))
def test_every_test_the_guarantees_cite_exists(path: str, name: str | None) -> None:
    source_file = ROOT / path
    assert source_file.is_file(), f"docs/guarantees.md cites {path}, which does not exist"
    if name is None:
        return
    function, _, parameter_id = name.partition("[")
    source = source_file.read_text()
    defined = {
        node.name for node in ast.walk(ast.parse(source)) if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    }
    assert function in defined, f"docs/guarantees.md cites {path}::{function}, which is not defined there"
    if parameter_id:
        assert f'"{parameter_id.rstrip("]")}"' in source, f"no parameter id {parameter_id} in {path}::{function}"
