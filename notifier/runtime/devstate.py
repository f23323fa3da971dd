"""What `notifier dev` leaves for `notifier publish` and `notifier token` beside it: its URL, generated secret
and API key, in a file only its user can read.

The file lives in a directory private to the user (`$XDG_RUNTIME_DIR/notifier`, else `<tmp>/notifier-<uid>`,
created 0700 and checked to be a real directory owned by the user), is created exclusively with mode 0600 and
never through a symlink, names the process that wrote it (a file whose process is gone is stale and ignored),
and is removed when `notifier dev` exits.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from notifier.observability.pids import process_exists

FILE_PREFIX = "dev-"
FILE_SUFFIX = ".json"
MAX_STATE_BYTES = 64 * 1024


class DevStateError(Exception):
    """The private directory or file cannot be used safely; the message says what to do."""


@dataclass(frozen=True)
class DevState:
    """One running `notifier dev`."""

    url: str
    port: int
    pid: int
    jwt_secret: str
    api_key: str


def _usable_private_dir(path: Path) -> bool:
    try:
        info = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() and not info.st_mode & 0o077


def state_dir() -> Path:
    """The user's private directory for dev state, created if missing; DevStateError if it is not private."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and _usable_private_dir(Path(runtime)):
        directory = Path(runtime) / "notifier"
    else:
        directory = Path(tempfile.gettempdir()) / f"notifier-{os.getuid()}"
    with contextlib.suppress(FileExistsError):
        os.mkdir(directory, 0o700)
    if not _usable_private_dir(directory):
        raise DevStateError(
            f"{directory} is not a directory private to this user (owner only, mode 0700, not a symlink); "
            "remove it or set XDG_RUNTIME_DIR"
        )
    return directory


def state_path(port: int) -> Path:
    return state_dir() / f"{FILE_PREFIX}{port}{FILE_SUFFIX}"


def write(state: DevState) -> Path:
    """Create the state file of `state.port` exclusively, mode 0600; an older one (a crashed run's) is replaced,
    and a symlink in its place is removed, never followed."""
    path = state_path(state.port)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as error:
        raise DevStateError(f"cannot create {path}: {error.strerror}") from None
    with os.fdopen(fd, "w") as file:
        json.dump(asdict(state), file)
    return path


def remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def _read(path: Path) -> DevState | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    with os.fdopen(fd, "rb") as file:
        if os.fstat(file.fileno()).st_uid != os.getuid():
            return None
        raw = file.read(MAX_STATE_BYTES)
    try:
        loaded = json.loads(raw)
        return DevState(
            url=str(loaded["url"]),
            port=int(loaded["port"]),
            pid=int(loaded["pid"]),
            jwt_secret=str(loaded["jwt_secret"]),
            api_key=str(loaded["api_key"]),
        )
    except (ValueError, KeyError, TypeError):
        return None


def running() -> list[DevState]:
    """Every `notifier dev` of this user that is still running, by port."""
    try:
        directory = state_dir()
    except DevStateError:
        return []
    found = []
    for path in sorted(directory.glob(f"{FILE_PREFIX}*{FILE_SUFFIX}")):
        state = _read(path)
        if state is not None and process_exists(state.pid):
            found.append(state)
    return found


def find(port: int | None) -> DevState | None:
    """The running dev server on `port`; with no port, the only one running (None if none or several)."""
    states = running()
    if port is not None:
        return next((state for state in states if state.port == port), None)
    return states[0] if len(states) == 1 else None
