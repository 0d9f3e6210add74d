"""A run folder is written by one live process at a time."""
from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path

from tsdyn.errors import fail
from tsdyn.runfolder.paths import LOCK


class RunLock:
    """Within ``with``: an exclusive lock on ``<run_dir>/run.lock`` (a POSIX record lock, which
    shared file systems such as NFS honour across machines). The kernel releases it when the process
    ends, however it ends, so a crashed or killed run never leaves a stale lock. A folder locked by
    another live process is refused (:class:`~tsdyn.config.ConfigError` naming that process)."""

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / LOCK
        self._file = None

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+")
        try:
            fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            fail("run_dir", str(self.path.parent), f"a folder no live process is writing ({holder} is)")
        f.seek(0)
        f.truncate()
        f.write(f"process {os.getpid()} on {socket.gethostname()}\n")
        f.flush()
        self._file = f
        return self

    def __exit__(self, *exc) -> None:
        fcntl.lockf(self._file, fcntl.LOCK_UN)
        self._file.close()
        self._file = None
