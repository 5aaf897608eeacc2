"""Wake the leader when a board changes: inotify on Linux, polling file sizes and times elsewhere.

A write to a board (by `hermes kanban`, `hermesd kanban` or a worker) appends to
`kanban.db-wal`, and a worker's wrapper renames its exit status file into place. Both
show up as inotify events on the directories watched here. The watcher thread blocks
in `poll()` on the inotify descriptor, so it costs nothing while the boards are quiet.
It holds two descriptors (inotify and a wake-up pipe) for its whole life, however many
directories it watches.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import select
import struct
import sys
import threading
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

IN_MODIFY = 0x00000002
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_Q_OVERFLOW = 0x00004000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
WATCH_MASK = IN_MODIFY | IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE

EVENT_HEADER = struct.Struct("iIII")

# How often the fallback compares file sizes and modification times.
POLL_SECONDS = 0.5

NameFilter = Callable[[str], bool]


def _load_inotify() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.inotify_init1.argtypes = [ctypes.c_int]
        libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        return libc
    except (OSError, AttributeError):
        return None


class ChangeWatcher:
    """Calls `on_change` from a thread of its own whenever a watched file changes."""

    def __init__(self, on_change: Callable[[], None]):
        self.on_change = on_change
        self._filters: dict[int, NameFilter] = {}
        self._polled: dict[Path, NameFilter] = {}
        self._directories: set[Path] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._libc = _load_inotify()
        self._fd = -1
        self._wake_read = self._wake_write = -1
        if self._libc is not None:
            fd = self._libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
            if fd < 0:
                log.warning("inotify is unavailable (errno %d); polling board files every %.1f s instead",
                            ctypes.get_errno(), POLL_SECONDS)
            else:
                self._fd = fd

    @property
    def uses_inotify(self) -> bool:
        return self._fd >= 0

    def watch(self, directory: Path, accept: NameFilter) -> None:
        """Watch the files in `directory` whose names `accept` returns True for; a second call is ignored."""
        with self._lock:
            if directory in self._directories:
                return
            if self.uses_inotify:
                assert self._libc is not None
                wd = self._libc.inotify_add_watch(self._fd, os.fsencode(directory), WATCH_MASK)
                if wd < 0:
                    code = ctypes.get_errno()
                    if code != errno.ENOENT:
                        log.warning("cannot watch %s: %s", directory, os.strerror(code))
                    return
                self._filters[wd] = accept
            else:
                self._polled[directory] = accept
            self._directories.add(directory)

    def start(self) -> None:
        if self.uses_inotify:
            self._wake_read, self._wake_write = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
            target = self._read_events
        else:
            target = self._poll_files
        self._thread = threading.Thread(target=target, name="board-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread and close both descriptors."""
        self._stop.set()
        if self._wake_write >= 0:
            os.write(self._wake_write, b"x")
        if self._thread is not None:
            self._thread.join(timeout=5)
        for fd in (self._fd, self._wake_read, self._wake_write):
            if fd >= 0:
                os.close(fd)
        self._fd = self._wake_read = self._wake_write = -1

    # inotify

    def _read_events(self) -> None:
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        poller.register(self._wake_read, select.POLLIN)
        while not self._stop.is_set():
            ready = {fd for fd, _mask in poller.poll()}
            if self._wake_read in ready or self._stop.is_set():
                return
            if self._drain() and not self._stop.is_set():
                self.on_change()

    def _drain(self) -> bool:
        """Read every pending event; True when one concerns a watched file."""
        relevant = False
        while True:
            try:
                data = os.read(self._fd, 65536)
            except BlockingIOError:
                return relevant
            offset = 0
            while offset + EVENT_HEADER.size <= len(data):
                wd, mask, _cookie, length = EVENT_HEADER.unpack_from(data, offset)
                raw_name = data[offset + EVENT_HEADER.size: offset + EVENT_HEADER.size + length]
                offset += EVENT_HEADER.size + length
                name = raw_name.split(b"\0", 1)[0].decode(errors="replace")
                with self._lock:
                    accept = self._filters.get(wd)
                if mask & IN_Q_OVERFLOW or (accept is not None and accept(name)):
                    relevant = True

    # Fallback

    def _snapshot(self) -> dict[Path, tuple[int, int]]:
        snapshot = {}
        with self._lock:
            polled = list(self._polled.items())
        for directory, accept in polled:
            try:
                entries = list(os.scandir(directory))
            except OSError:
                continue
            for entry in entries:
                if not accept(entry.name):
                    continue
                try:
                    result = entry.stat()
                except OSError:
                    continue
                snapshot[Path(entry.path)] = (result.st_size, result.st_mtime_ns)
        return snapshot

    def _poll_files(self) -> None:
        previous = self._snapshot()
        while not self._stop.wait(POLL_SECONDS):
            current = self._snapshot()
            if current != previous:
                previous = current
                self.on_change()
