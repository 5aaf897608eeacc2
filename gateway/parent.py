"""The gateway's channel to its supervisor: a stream socket inherited at start.

The gateway writes one JSON object per line (ready, role changes, board counts,
heartbeats). The supervisor never writes; end of file on the channel means the
supervisor is gone, and the gateway stops so that no gateway outlives it. On Linux the
kernel also sends SIGTERM when the parent dies (`PR_SET_PDEATHSIG`), which covers a
gateway that is busy when the channel closes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import logging
import os
import signal
import socket
import sys
import threading
from typing import Any, Callable

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1


def request_parent_death_signal(expected_parent: int | None) -> None:
    """Ask the kernel for SIGTERM when the parent dies; exit at once if it already has."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            log.warning("prctl(PR_SET_PDEATHSIG) failed: errno %d", ctypes.get_errno())

    # The parent may have died before prctl ran; then nobody will ever send the signal.
    if expected_parent is not None and os.getppid() != expected_parent:
        log.error("supervisor (pid %d) is gone before the gateway started; exiting", expected_parent)
        sys.exit(0)


class ParentChannel:
    """Messages to the supervisor, and a watch for its end of the channel closing."""

    def __init__(self, fd: int | None):
        self._socket = socket.socket(fileno=fd) if fd is not None else None
        self._send_lock = threading.Lock()

    def send(self, message_type: str, **fields: Any) -> None:
        if self._socket is None:
            return
        line = json.dumps({"type": message_type, **fields}, default=str) + "\n"
        with self._send_lock:
            try:
                self._socket.sendall(line.encode())
            except OSError as error:
                log.debug("cannot send %s to the supervisor: %s", message_type, error)

    def watch_for_close(self, on_close: Callable[[], None]) -> None:
        """Call `on_close` from a daemon thread once the supervisor's end closes."""
        if self._socket is None:
            return

        def wait_for_end_of_file() -> None:
            assert self._socket is not None
            while True:
                try:
                    data = self._socket.recv(4096)
                except OSError:
                    data = b""
                if not data:
                    log.warning("supervisor channel closed; stopping the gateway")
                    on_close()
                    return

        threading.Thread(target=wait_for_end_of_file, name="parent-watch", daemon=True).start()
