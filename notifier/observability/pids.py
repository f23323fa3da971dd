"""Whether a process id still names a running process (state files and metrics snapshots are keyed by pid)."""

from __future__ import annotations

import os


def process_exists(pid: int) -> bool:
    """True if a process with `pid` exists, ours or another user's."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists; it is just not ours to signal
    return True
