"""Wake the leader soon after another process commits to a board.

SQLite in WAL mode appends every commit to `kanban.db-wal`, so a change of that file's
size or modification time means a new commit. A thread compares `os.stat` of each
board's files every few milliseconds and sets an event on a change. Polling `stat`
opens no file, so the number of file descriptors on the board stays as it is.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

log = logging.getLogger(__name__)

POLL_SECONDS = 0.02


def _signature(path: Path) -> tuple[int, int, int] | None:
    try:
        status = os.stat(path)
    except OSError:
        return None
    return (status.st_ino, status.st_size, status.st_mtime_ns)


class ChangeWatcher:
    """Sets `wake` whenever one of the watched database files changes."""

    def __init__(self, wake: threading.Event, interval: float = POLL_SECONDS):
        self.wake = wake
        self.interval = interval
        self._paths: list[Path] = []
        self._signatures: dict[Path, tuple[int, int, int] | None] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="board-watch", daemon=True)
        self._started = False

    def watch(self, databases: list[Path]) -> None:
        """Watch each database and its `-wal` file; start the thread on the first call."""
        paths = []
        for database in databases:
            paths.extend([database, Path(f"{database}-wal")])
        with self._lock:
            if paths != self._paths:
                self._paths = paths
                self._signatures = {path: _signature(path) for path in paths}
        if not self._started:
            self._started = True
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._started:
            self._thread.join(timeout=1.0)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            changed = False
            with self._lock:
                for path in self._paths:
                    signature = _signature(path)
                    if signature != self._signatures.get(path):
                        self._signatures[path] = signature
                        changed = True
            if changed:
                self.wake.set()
