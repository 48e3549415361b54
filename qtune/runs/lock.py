"""One run per run directory: a lock held for the run's life.

Two runs writing one directory interleave their CSV logs and checkpoints and leave a directory
that looks finished and is not. The lock is ``fcntl.flock`` on ``<run_dir>/.qtune.lock``: the
kernel drops it when its process ends, however it ends, so the lock of a process that was killed
is simply taken over. The file names its holder (host, process id, start time, command), which a
refused second run prints. Only the launching process takes it (rank 0 of node 0): ranks that a
launcher started share the holder's run. On a network file system without ``flock`` semantics
the lock protects only within one machine.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

LOCK_NAME = ".qtune.lock"


def is_launching_process() -> bool:
    return all(os.environ.get(var, "0") == "0" for var in ("RANK", "LOCAL_RANK", "NODE_RANK"))


def held_by_another(run_dir: str | os.PathLike) -> bool:
    """True while another process holds `run_dir`'s lock (a probe that takes nothing)."""
    path = Path(run_dir) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops a lock the probe took
    return False


class RunDirectoryLock:
    """``with RunDirectoryLock(run_dir): ...``; a second holder is refused with ``RuntimeError``."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self._fd: int | None = None

    def __enter__(self) -> RunDirectoryLock:
        if not is_launching_process():
            return self
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 4096).decode("utf-8", "replace").strip() or "unknown"
            os.close(fd)
            raise RuntimeError(
                f"{self.run_dir} is in use by another run ({holder}); wait for it to end, or "
                "choose another hydra.run.dir"
            ) from None
        holder = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": " ".join(sys.argv),
        }
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(holder).encode())
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is None:
            return
        self.path.unlink(missing_ok=True)  # still held: no other run can be between open and lock
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None
