"""An advisory writer lock per version directory (`VERSION/.lock`), across processes and threads.

Held for each change to a version (a whole stage run included), so two writers never interleave
manifest updates and opening a version never deletes the temp dir of a stage still running.
The kernel drops the lock when its holder dies, so a killed run never leaves it stuck.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import SculptError

try:
    import fcntl
except ImportError:  # Windows: no flock; one writer per version is then up to the caller
    fcntl = None

LOCK_NAME = ".lock"


class WriterLock:
    def __init__(self, directory: Path):
        self.directory = directory
        self._thread = threading.RLock()
        self._fd: int | None = None
        self._depth = 0

    @contextmanager
    def hold(self, what: str) -> Iterator[None]:
        """Hold the lock (re-entrant in this thread); a SculptError at once if someone else holds it."""
        if not self._thread.acquire(blocking=False):
            raise SculptError(f"{self.directory} is busy in another thread of this process: run one stage at a time")
        try:
            if self._depth == 0:
                self._fd = _acquire(self.directory, what)
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0 and self._fd is not None:
                    os.close(self._fd)  # closing the descriptor releases the flock
                    self._fd = None
        finally:
            self._thread.release()


def _acquire(directory: Path, what: str) -> int | None:
    if fcntl is None:
        return None
    fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 200).decode("utf-8", "replace").strip() or "another process"
        os.close(fd)
        raise SculptError(f"{directory} is being written by {holder}: wait for it to finish, "
                          f"or start a new version") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} ({what})\n".encode())
    return fd
