"""The JavaScript tooling of the `npm` tests: what tests/npm/package-lock.json installs (`.ci/setup-npm`).

Every tool is called by its path, never through PATH or `npm exec`: the Node 18, 20 and 22 binaries are npm
packages there, and each would shadow the system `node` as `node_modules/.bin/node`.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tests.support import ROOT

TOOLING = ROOT / "tests" / "npm"
NODE_MODULES = TOOLING / "node_modules"
CONSUMERS = TOOLING / "consumer"
PACKAGE_DIR = ROOT / "notifier" / "static"
"""The npm package's directory: the same files the service serves at /static."""
NODE_VERSIONS = (18, 20, 22)


@dataclass(frozen=True)
class NpmTools:
    node: str
    """The system's node, which runs npm, tsc and esbuild."""
    npm: str
    tsc: Path
    esbuild: Path
    runtimes: dict[int, Path]
    """Node major version -> its binary, from the node18/node20/node22 packages of tests/npm."""

    def run(
        self, *args: str | Path, cwd: Path, env: Mapping[str, str] | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """A tool or program to completion in `cwd` (with `env`, else this process's), its output as text."""
        argv = [str(arg) for arg in args]
        environment = dict(env) if env is not None else None
        return subprocess.run(
            argv, cwd=cwd, env=environment, capture_output=True, text=True, timeout=timeout, check=False
        )


def find_npm_tools() -> NpmTools:
    """The tooling, or an AssertionError that says how to install what is missing."""
    node, npm = shutil.which("node"), shutil.which("npm")
    assert node and npm, "node and npm are needed for the npm tests (.ci/setup-browser installs node with npm)"
    tools = NpmTools(
        node=node,
        npm=npm,
        tsc=NODE_MODULES / "typescript" / "bin" / "tsc",
        esbuild=NODE_MODULES / "esbuild" / "bin" / "esbuild",
        runtimes={major: NODE_MODULES / f"node{major}" / "bin" / "node" for major in NODE_VERSIONS},
    )
    wanted = [tools.tsc, tools.esbuild, NODE_MODULES / "ws", *tools.runtimes.values()]
    missing = [str(path.relative_to(ROOT)) for path in wanted if not path.exists()]
    assert not missing, f"missing {', '.join(missing)}: run .ci/setup-npm (npm ci in tests/npm)"
    return tools
