"""One supervised gateway: how it is started and stopped, and the state it is in.

States: `starting` (spawned, not yet ready), `running` (reported ready), `backoff`
(waiting to restart after an unexpected exit), `fatal`, `stopping`, `stopped` (on
request) and `exited` (ended on its own with status 0, and not restarted). A gateway is
`fatal` when it failed too often or its profile cannot be configured. It stays so until
`hermesd restart NAME`.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from kanban.home import Home
from kanban.profiles import Profile
from supervisor.logfile import RotatingLog
from supervisor.settings import SupervisorSettings
from supervisor.processes import start_time

log = logging.getLogger(__name__)

STARTING = "starting"
RUNNING = "running"
BACKOFF = "backoff"
FATAL = "fatal"
STOPPING = "stopping"
STOPPED = "stopped"
EXITED = "exited"

ACTIVE_STATES = (STARTING, RUNNING, STOPPING)

# Exit statuses with a meaning agreed with gateway.main.
EXIT_STEPPED_DOWN = 75
EXIT_CONFIG = 78

COMMAND_ENV_PREFIX = "HERMESD_GATEWAY_COMMAND_"


def gateway_command(home: Home, profile: Profile, parent_fd: int, run_dir: str, heartbeat_seconds: float) -> list[str]:
    """Build the gateway's command line.

    `HERMESD_GATEWAY_COMMAND_<PROFILE>` (profile name upper-cased, '-' as '_') replaces
    `python -m gateway` for one profile, for example to run a gateway under a profiler.
    The tests use it to start gateways that misbehave.
    """
    override = os.environ.get(COMMAND_ENV_PREFIX + profile.name.upper().replace("-", "_"))
    prefix = shlex.split(override) if override else [sys.executable, "-m", "gateway"]
    return prefix + [
        "--home", str(home.root),
        "--profile", profile.name,
        "--dispatch-in-gateway", "true" if profile.dispatch_in_gateway else "false",
        "--parent-fd", str(parent_fd),
        "--parent-pid", str(os.getpid()),
        "--run-dir", run_dir,
        "--heartbeat-seconds", f"{heartbeat_seconds:g}",
    ]


class GatewayChild:
    """The supervisor's view of one profile's gateway process."""

    def __init__(self, profile: Profile, log_path: Path, settings: SupervisorSettings):
        self.profile = profile
        self.settings = settings
        self.log_path = log_path
        self.log = RotatingLog(log_path, settings.log_max_bytes, settings.log_backups)
        self.state = STOPPED
        self.pid: int | None = None
        self.process_start_time: float | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self.channel: socket.socket | None = None
        self.output_fd: int | None = None
        self.channel_buffer = b""
        self.role = "none"
        self.role_error: str | None = None
        self.boards: dict[str, Any] = {}
        self.skipped_boards: dict[str, str] = {}
        # Notifications the leader could not deliver through this gateway yet: {"count", "reason"}.
        self.pending_notifications: dict[str, Any] | None = None
        self.restarts = 0
        self.failures = 0
        self.last_exit: dict[str, Any] | None = None
        self.error: str | None = profile.error.describe() if profile.error else None
        self.started_at: float | None = None
        self.ready_at: float | None = None
        self.deadline: float | None = None
        self.restart_after_stop = False
        self.last_message_at: float | None = None
        self.last_heard = time.monotonic()
        self.leader_pass_age: float | None = None

    @property
    def name(self) -> str:
        return self.profile.name

    @property
    def is_active(self) -> bool:
        return self.state in ACTIVE_STATES

    # Start

    def spawn(self, home: Home, run_dir: str, umask: int = -1) -> None:
        """Start the gateway process in a process group of its own; raise OSError when it cannot start."""
        parent_end, child_end = socket.socketpair()
        output_read, output_write = os.pipe()
        command = gateway_command(home, self.profile, child_end.fileno(), run_dir, self.settings.heartbeat_seconds)
        try:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=output_write,
                stderr=output_write,
                pass_fds=(child_end.fileno(),),
                process_group=0,
                umask=umask,
                close_fds=True,
            )
        except OSError:
            parent_end.close()
            os.close(output_read)
            raise
        finally:
            child_end.close()
            os.close(output_write)

        parent_end.setblocking(False)
        os.set_blocking(output_read, False)
        self.process = process
        self.pid = process.pid
        self.process_start_time = start_time(process.pid)
        self.channel = parent_end
        self.output_fd = output_read
        self.channel_buffer = b""
        self.state = STARTING
        self.role = "none"
        self.role_error = None
        self.boards = {}
        self.started_at = time.time()
        self.last_heard = time.monotonic()
        self.leader_pass_age = None
        self.ready_at = None
        self.deadline = time.monotonic() + self.settings.start_timeout
        log.info("started gateway %s (pid %d): %s", self.name, process.pid, shlex.join(command[:3]))

    # Messages from the gateway

    def read_channel(self) -> list[dict[str, Any]]:
        """Read what the gateway sent; an empty read means it closed its end."""
        if self.channel is None:
            return []
        try:
            data = self.channel.recv(65536)
        except BlockingIOError:
            return []
        except OSError:
            data = b""
        if not data:
            self.close_channel()
            return []

        self.channel_buffer += data
        messages = []
        while b"\n" in self.channel_buffer:
            line, self.channel_buffer = self.channel_buffer.split(b"\n", 1)
            try:
                message = json.loads(line)
            except ValueError:
                log.warning("gateway %s sent an invalid message: %r", self.name, line[:200])
                continue
            if isinstance(message, dict):
                messages.append(message)
        self.last_message_at = time.time()
        self.last_heard = time.monotonic()
        return messages

    def close_channel(self) -> None:
        if self.channel is not None:
            self.channel.close()
            self.channel = None

    def read_output(self) -> bool:
        """Copy the gateway's output to its log; return False at end of file (the caller then closes it)."""
        if self.output_fd is None:
            return False
        try:
            data = os.read(self.output_fd, 65536)
        except BlockingIOError:
            return True
        except OSError:
            data = b""
        if not data:
            return False
        try:
            self.log.write(data)
        except OSError as error:
            log.error("cannot write the log of gateway %s to %s: %s", self.name, self.log_path, error)
        return True

    def close_output(self) -> None:
        if self.output_fd is not None:
            os.close(self.output_fd)
            self.output_fd = None

    # Stop

    def signal_group(self, signum: int) -> None:
        """Send `signum` to the gateway's process group (its pid is the group id)."""
        if self.pid is None:
            return
        try:
            os.killpg(self.pid, signum)
        except ProcessLookupError:
            pass
        except PermissionError as error:
            log.error("cannot signal gateway %s (pid %d): %s", self.name, self.pid, error)

    def begin_stop(self) -> None:
        self.state = STOPPING
        self.deadline = time.monotonic() + self.settings.stop_timeout
        log.info("stopping gateway %s (pid %s) with SIGTERM", self.name, self.pid)
        self.signal_group(signal.SIGTERM)

    def record_exit(self, status: int) -> None:
        """Store how the process ended; the caller decides what state follows."""
        code = os.waitstatus_to_exitcode(status)
        if code < 0:
            self.last_exit = {"signal": signal.Signals(-code).name, "code": None, "at": time.time()}
        else:
            self.last_exit = {"signal": None, "code": code, "at": time.time()}
        if self.process is not None:
            self.process.returncode = code
        # Descendants left in the gateway's process group go with it.
        self.signal_group(signal.SIGKILL)
        self.close_channel()
        self.pid = None
        self.process_start_time = None
        self.process = None
        self.role = "none"
        self.boards = {}

    def uptime(self) -> float | None:
        if self.state not in (RUNNING, STARTING) or self.started_at is None:
            return None
        return max(time.time() - self.started_at, 0.0)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "state": self.state,
            "pid": self.pid,
            "pid_start_time": self.process_start_time,
            "role": self.role,
            "role_error": self.role_error,
            "dispatch_in_gateway": self.profile.dispatch_in_gateway,
            "dispatch_source": self.profile.dispatch_source,
            "restarts": self.restarts,
            "failures": self.failures,
            "last_exit": self.last_exit,
            "started_at": self.started_at,
            "uptime": self.uptime(),
            "log": str(self.log_path),
            "error": self.error,
            "boards": self.boards,
            "skipped_boards": self.skipped_boards,
            "pending_notifications": self.pending_notifications,
        }
