"""systemd's notification protocol: datagrams such as `READY=1` to `$NOTIFY_SOCKET`."""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Iterable
from typing import Any

log = logging.getLogger(__name__)


class SystemdNotifier:
    """Sends readiness, status and watchdog messages when running under systemd, otherwise nothing."""

    def __init__(self, environ: dict[str, str] | None = None):
        environ = dict(os.environ if environ is None else environ)
        self.address = environ.get("NOTIFY_SOCKET") or None
        if self.address and self.address.startswith("@"):
            self.address = "\0" + self.address[1:]  # an abstract socket
        self.watchdog_interval = _watchdog_interval(environ)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *lines: str) -> None:
        if self.address is None:
            return
        payload = "\n".join(lines).encode()
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client:
            try:
                client.sendto(payload, self.address)
            except OSError as error:
                log.warning("cannot notify systemd at %s: %s", self.address.lstrip("\0"), error)

    def ready(self, status: str) -> None:
        self.notify("READY=1", f"STATUS={status}")

    def status(self, status: str) -> None:
        self.notify(f"STATUS={status}")

    def watchdog(self) -> None:
        self.notify("WATCHDOG=1")

    def stopping(self) -> None:
        self.notify("STOPPING=1", "STATUS=stopping gateways")


def _watchdog_interval(environ: dict[str, str]) -> float | None:
    """Half of `WATCHDOG_USEC` in seconds, as sd_watchdog_enabled(3) recommends; None when unset."""
    text = environ.get("WATCHDOG_USEC")
    if not text:
        return None
    watchdog_pid = environ.get("WATCHDOG_PID")
    if watchdog_pid and watchdog_pid != str(os.getpid()):
        return None
    try:
        microseconds = int(text)
    except ValueError:
        log.warning("ignoring invalid WATCHDOG_USEC=%r", text)
        return None
    if microseconds <= 0:
        return None
    return microseconds / 2_000_000


class SystemdReporter:
    """Tells systemd when the gateways are up, how many are in which state, and that the loop is alive."""

    REPORTED_STATES = ("running", "starting", "backoff", "fatal")

    def __init__(self, notifier: SystemdNotifier):
        self.notifier = notifier
        self.announced_ready = False
        self.last_status_line = ""
        self.last_watchdog = 0.0

    def update(self, children: Iterable[Any], starts_pending: bool) -> None:
        """Send READY=1 once no gateway is starting, STATUS= when the counts change, and WATCHDOG=1 on time."""
        if not self.notifier.enabled:
            return
        counts = {state: 0 for state in self.REPORTED_STATES}
        for child in children:
            if child.state in counts:
                counts[child.state] += 1
        line = ", ".join(f"{count} {state}" for state, count in counts.items() if count) or "no gateways"

        if not self.announced_ready and counts["starting"] == 0 and not starts_pending:
            self.notifier.ready(line)
            self.announced_ready = True
            self.last_status_line = line
        elif line != self.last_status_line:
            self.notifier.status(line)
            self.last_status_line = line

        interval = self.notifier.watchdog_interval
        if interval is not None and time.monotonic() - self.last_watchdog >= interval:
            self.notifier.watchdog()
            self.last_watchdog = time.monotonic()
