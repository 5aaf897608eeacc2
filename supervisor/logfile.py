"""A gateway's log file with size-based rotation (`name.log`, `name.log.1`, ... `name.log.N`)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_BACKUPS = 5


class RotatingLog:
    """Appends bytes to a file, rotating it at `max_bytes`; recreates the file if it was deleted."""

    def __init__(self, path: Path, max_bytes: int = DEFAULT_MAX_BYTES, backups: int = DEFAULT_BACKUPS):
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self._fd: int | None = None
        self._size = 0
        self._identity: tuple[int, int] | None = None

    def _open(self) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        status = os.fstat(self._fd)
        self._size = status.st_size
        self._identity = (status.st_dev, status.st_ino)

    def _file_was_removed(self) -> bool:
        try:
            status = os.stat(self.path, follow_symlinks=False)
        except FileNotFoundError:
            return True
        return (status.st_dev, status.st_ino) != self._identity

    def write(self, data: bytes) -> None:
        if self._fd is None or self._file_was_removed():
            self.close()
            self._open()
        if self._size + len(data) > self.max_bytes and self._size > 0:
            self.rotate()

        assert self._fd is not None
        os.write(self._fd, data)
        self._size += len(data)

    def rotate(self) -> None:
        self.close()
        if self.backups > 0:
            for index in range(self.backups - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{index}")
                if older.exists():
                    os.replace(older, self.path.with_name(f"{self.path.name}.{index + 1}"))
            if self.path.exists():
                os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        else:
            self.path.unlink(missing_ok=True)
        self._open()

    def reopen(self) -> None:
        """Close the file and open the path again, creating it if it was deleted (on reload)."""
        self.close()
        self._open()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def reopen_file_handlers() -> None:
    """Reopen the files of the root logger's file handlers, so a log deleted by hand comes back."""
    for handler in logging.getLogger().handlers:
        if not isinstance(handler, logging.FileHandler):
            continue
        handler.acquire()
        try:
            if handler.stream is not None:
                handler.stream.close()
            handler.stream = handler._open()
        except OSError as error:
            log.error("cannot reopen the log file %s: %s", handler.baseFilename, error)
        finally:
            handler.release()
