"""The supervisor: starts one gateway per profile and keeps them in the state the user asked for.

One thread runs one loop. Signals are queued by their handlers and woken through
`signal.set_wakeup_fd`, so the loop handles them between other work, as gunicorn's
arbiter does. Each pass waits on the control socket, the gateways' channels and output
pipes, then reaps exited processes, applies the restart policy and writes the state file.
"""

from __future__ import annotations

import logging
import os
import selectors
import signal
import socket
import time
from typing import Any

import filelock

from kanban.election import lock_holders
from kanban.home import DEFAULT_PROFILE, Home
from kanban.jsonfile import write_json_atomically
from kanban.profiles import ConfigError, Profile, load_profiles, read_config_file
from kanban.settings import board_wide_settings_error
from supervisor import child as states
from supervisor.child import GatewayChild
from supervisor.control import bind_control_socket, serve_one_request
from supervisor.descendants import become_subreaper, kill_descendants
from supervisor.logfile import reopen_file_handlers
from supervisor.paths import StatePaths
from supervisor.processes import start_time
from supervisor.sdnotify import SystemdNotifier, SystemdReporter
from supervisor.settings import SupervisorSettings

log = logging.getLogger("hermesd")

# How long other candidates wait for `default` to take the lock first, so the leader is predictable.
LEADER_FIRST_SECONDS = 5.0
# Maximum sleep of the loop in seconds; timers (backoff, stop deadlines, watchdog) wake it earlier.
LOOP_SECONDS = 1.0
# Gateways started in one pass of the loop; starting 50 at once would keep the control socket
# unanswered for seconds on a busy machine.
STARTS_PER_PASS = 4
# Time to let a gateway's leftover descendants exit after SIGTERM before SIGKILL.
ORPHAN_GRACE_SECONDS = 2.0


class AlreadyRunning(Exception):
    def __init__(self, pid: int | None):
        self.pid = pid
        super().__init__(f"a supervisor is already running for this home (pid {pid})")


class Supervisor:
    """The parent process of every gateway of one home."""

    def __init__(self, home: Home, only: list[str] | None = None):
        self.home = home
        self.paths = StatePaths(home)
        self.only = only
        self.children: dict[str, GatewayChild] = {}
        self.wanted: list[str] = []
        self.removed: set[str] = set()
        self.next_start: dict[str, float] = {}
        self.stop_reasons: dict[str, str] = {}
        self.selector = selectors.DefaultSelector()
        self.signal_queue: list[int] = []
        self.shutting_down = False
        self.state_dirty = True
        self.systemd = SystemdReporter(SystemdNotifier())
        self.leader_hold_until = 0.0
        self.started_at = time.time()
        self.user_umask = 0o022
        self.settings = SupervisorSettings()
        self._lock = filelock.UnixFileLock(str(self.paths.supervisor_lock), mode=0o600, blocking=False,
                                           fallback_to_soft=False, preserve_lock_file=True, thread_local=False)
        self._control: socket.socket | None = None
        self._wakeup_read: socket.socket | None = None

    # Setup and teardown

    def acquire_home(self) -> None:
        """Take the one-supervisor-per-home lock; raise AlreadyRunning when another supervisor holds it."""
        self.paths.create()
        self.settings = self._load_settings()
        try:
            self._lock.acquire(blocking=False)
        except filelock.Timeout:
            holders = lock_holders(self.paths.supervisor_lock)
            raise AlreadyRunning(holders[0].pid if holders else None) from None

    def setup(self) -> None:
        # Files the supervisor creates (state, logs, sockets) are private; gateways get the user's umask back.
        self.user_umask = os.umask(0o077)
        become_subreaper()
        self._install_signal_handlers()
        self._control = bind_control_socket(self.paths.control_socket)
        self.selector.register(self._control, selectors.EVENT_READ, ("control", None))
        log.info("supervisor started (pid %d) for home %s", os.getpid(), self.home.root)

        for profile in load_profiles(self.home):
            self._add_child(profile)
        self.wanted = list(self.only) if self.only else list(self.children)
        self.leader_hold_until = time.monotonic() + LEADER_FIRST_SECONDS
        for name in self.wanted:
            self._queue_start(name)

    def _load_settings(self) -> SupervisorSettings:
        """Read the supervisor settings; on an error keep the current ones and log why."""
        path = self.home.root / "config.yaml"
        try:
            return SupervisorSettings.from_config(read_config_file(path), path)
        except ConfigError as error:
            log.error("ignoring the hermesd settings: %s", error.describe())
            return self.settings

    def _install_signal_handlers(self) -> None:
        self._wakeup_read, wakeup_write = socket.socketpair()
        self._wakeup_read.setblocking(False)
        wakeup_write.setblocking(False)
        self._wakeup_write = wakeup_write
        signal.set_wakeup_fd(wakeup_write.fileno(), warn_on_full_buffer=False)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(signum, self._queue_signal)
        self.selector.register(self._wakeup_read, selectors.EVENT_READ, ("wakeup", None))

    def _queue_signal(self, signum: int, _frame: object) -> None:
        self.signal_queue.append(signum)

    def _add_child(self, profile: Profile) -> GatewayChild:
        child = GatewayChild(profile, self.paths.gateway_log(profile.name), self.settings)
        if profile.error is not None:
            child.state = states.FATAL
            log.error("profile %s is not started: %s", profile.name, profile.error.describe())
        self.children[profile.name] = child
        return child

    def run(self) -> int:
        self.setup()
        try:
            self.loop()
        finally:
            self.teardown()
        return 0

    def teardown(self) -> None:
        self._kill_leftover_descendants()
        if self._control is not None:
            self._control.close()
            self.paths.control_socket.unlink(missing_ok=True)
        self.write_state(running=False)
        self._lock.release()
        log.info("supervisor stopped (pid %d)", os.getpid())

    # The loop

    def loop(self) -> None:
        while True:
            for key, _events in self.selector.select(self._next_timeout()):
                self._handle_readable(key)
            self._handle_signals()
            self._reap()
            self._tick()

            if self.state_dirty:
                self.write_state(running=True)
            self.systemd.update(self.children.values(), starts_pending=bool(self.next_start))

            if self.shutting_down and not any(child.is_active for child in self.children.values()):
                return

    def _next_timeout(self) -> float:
        now = time.monotonic()
        timeout = LOOP_SECONDS
        for when in self.next_start.values():
            timeout = min(timeout, when - now)
        for child in self.children.values():
            if child.deadline is not None and child.is_active:
                timeout = min(timeout, child.deadline - now)
        return max(timeout, 0.0)

    def _handle_readable(self, key: selectors.SelectorKey) -> None:
        kind, child = key.data
        if kind == "control":
            self._accept_control()
        elif kind == "wakeup":
            try:
                while self._wakeup_read is not None and self._wakeup_read.recv(4096):
                    pass
            except BlockingIOError:
                pass
        elif kind == "channel":
            for message in child.read_channel():
                self._handle_message(child, message)
            if child.channel is None:
                self._unregister(key.fileobj)
        elif kind == "output":
            if not child.read_output():
                self._close_output(child)

    def _unregister(self, fileobj: Any) -> None:
        try:
            self.selector.unregister(fileobj)
        except (KeyError, ValueError):
            pass

    def _handle_signals(self) -> None:
        while self.signal_queue:
            signum = self.signal_queue.pop(0)
            if signum in (signal.SIGTERM, signal.SIGINT):
                log.info("received %s; stopping all gateways", signal.Signals(signum).name)
                self.begin_shutdown()
            elif signum == signal.SIGHUP:
                log.info("received SIGHUP; reloading profiles")
                self.reload()

    # Children

    def _queue_start(self, name: str, delay: float = 0.0) -> None:
        self.next_start[name] = time.monotonic() + delay

    def _start(self, name: str) -> None:
        child = self.children[name]
        self.next_start.pop(name, None)
        if child.profile.error is not None:
            child.state = states.FATAL
            child.error = child.profile.error.describe()
            self.state_dirty = True
            return
        child.error = None
        try:
            child.spawn(self.home, str(self.paths.run_dir), self.user_umask)
        except OSError as error:
            log.error("cannot start gateway %s: %s", name, error)
            child.last_exit = {"signal": None, "code": None, "error": str(error), "at": time.time()}
            child.error = f"cannot start: {error}"
            self._after_failure(child)
            return
        self.selector.register(child.channel, selectors.EVENT_READ, ("channel", child))
        self.selector.register(child.output_fd, selectors.EVENT_READ, ("output", child))
        if name == DEFAULT_PROFILE and child.profile.dispatch_in_gateway:
            self.leader_hold_until = time.monotonic() + LEADER_FIRST_SECONDS
        self.state_dirty = True

    def _handle_message(self, child: GatewayChild, message: dict[str, Any]) -> None:
        """Apply a gateway's message; the state file is rewritten only when something it shows changed."""
        kind = message.get("type")
        if kind == "heartbeat":
            # read_channel already recorded when the gateway was last heard from.
            child.leader_pass_age = message.get("leader_pass_age")
            return
        if kind == "ready" and child.state == states.STARTING:
            child.state = states.RUNNING
            child.ready_at = time.time()
            child.deadline = None
            log.info("gateway %s is ready (pid %s)", child.name, child.pid)
        elif kind == "role":
            child.role = str(message.get("role", "none"))
            child.role_error = message.get("error")
            log.info("gateway %s role: %s%s", child.name, child.role,
                     f" ({child.role_error})" if child.role_error else "")
            if child.name == DEFAULT_PROFILE:
                self.leader_hold_until = 0.0
        elif kind == "boards":
            boards = message.get("boards") or {}
            skipped = message.get("skipped") or {}
            if boards == child.boards and skipped == child.skipped_boards:
                return
            child.boards = boards
            child.skipped_boards = skipped
        elif kind == "notifications":
            # The leader reports, per target profile, the messages it could not deliver yet.
            pending = message.get("pending") or {}
            for target in self.children.values():
                target.pending_notifications = pending.get(target.name)
        elif kind == "fatal":
            child.error = str(message.get("error"))
        self.state_dirty = True

    def _reap(self) -> None:
        """Collect every exited child, gateways and adopted orphans alike, so none stays a zombie."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            child = self._child_by_pid(pid)
            if child is None:
                log.debug("reaped orphan pid %d", pid)
                continue
            self._handle_exit(child, status)

    def _child_by_pid(self, pid: int) -> GatewayChild | None:
        for child in self.children.values():
            if child.pid == pid:
                return child
        return None

    def _handle_exit(self, child: GatewayChild, status: int) -> None:
        previous_state = child.state
        ran_for = time.time() - (child.started_at or time.time())
        if child.channel is not None:
            self._unregister(child.channel)
        child.record_exit(status)
        self._drain_output(child)
        self.state_dirty = True
        reason = self.stop_reasons.pop(child.name, None)
        code = child.last_exit.get("code") if child.last_exit else None
        log.info("gateway %s exited (%s) after %.1f s", child.name, _describe_exit(child.last_exit), ran_for)

        if child.name in self.removed:
            child.state = states.STOPPED
            self._forget(child.name)
        elif reason == "restart":
            child.state = states.STOPPED
            child.restarts += 1
            self._start(child.name)
        elif reason in ("request", "shutdown"):
            child.state = states.STOPPED
        elif reason == "start_timeout":
            child.error = f"not ready within {self.settings.start_timeout:g} s"
            self._after_failure(child)
        elif reason == "hung":
            self._after_failure(child)
        elif self.shutting_down:
            child.state = states.STOPPED
        elif code == states.EXIT_STEPPED_DOWN:
            log.info("gateway %s stepped down as leader; restarting it as a candidate", child.name)
            child.restarts += 1
            child.state = states.STOPPED
            self._start(child.name)
        elif code == states.EXIT_CONFIG:
            child.state = states.FATAL
            child.error = child.error or "configuration error; see the gateway log"
        elif code == 0:
            child.state = states.EXITED
        else:
            if previous_state == states.RUNNING and ran_for >= self.settings.stable_seconds:
                child.failures = 0
            self._after_failure(child)

    def _drain_output(self, child: GatewayChild) -> None:
        """Copy what the gateway wrote just before it exited, then close its pipe."""
        while child.output_fd is not None and _has_pending_data(child.output_fd):
            if not child.read_output():
                break
        # A descendant may still hold the pipe open; its later output is not the gateway's.
        self._close_output(child)

    def _close_output(self, child: GatewayChild) -> None:
        if child.output_fd is not None:
            self._unregister(child.output_fd)
            child.close_output()

    def _after_failure(self, child: GatewayChild) -> None:
        child.failures += 1
        if child.failures >= self.settings.max_failures:
            child.state = states.FATAL
            log.error("gateway %s failed %d times in a row; it stays fatal until `hermesd restart %s`",
                      child.name, child.failures, child.name)
            return
        delay = self.settings.restart_delay(child.failures)
        child.state = states.BACKOFF
        child.restarts += 1
        self._queue_start(child.name, delay)
        log.warning("gateway %s will restart in %.1f s (failure %d of %d)", child.name, delay, child.failures,
                    self.settings.max_failures)

    def _tick(self) -> None:
        now = time.monotonic()
        started = 0
        for name, when in list(self.next_start.items()):
            if when > now or self.shutting_down:
                continue
            child = self.children.get(name)
            if child is None:
                self.next_start.pop(name, None)
                continue
            if self._must_wait_for_leader(child, now):
                continue
            if started >= STARTS_PER_PASS:
                break  # the rest start on the next pass, after the control socket has been served
            self._start(name)
            started += 1

        for child in self.children.values():
            self._check_hang(child, now)
            if child.deadline is None or child.deadline > now:
                continue
            if child.state == states.STARTING:
                log.error("gateway %s did not report ready within %g s; stopping it", child.name,
                          self.settings.start_timeout)
                self.stop_reasons[child.name] = "start_timeout"
                child.begin_stop()
            elif child.state == states.STOPPING:
                log.warning("gateway %s (pid %s) did not stop within %g s; sending SIGKILL", child.name, child.pid,
                            self.settings.stop_timeout)
                child.signal_group(signal.SIGKILL)
                child.deadline = None

    def _check_hang(self, child: GatewayChild, now: float) -> None:
        """Kill a running gateway that went silent, or whose leader loop stopped making passes.

        A gateway frozen with SIGSTOP, or deadlocked, keeps the election lock while it lives, so
        the standbys could never take over; killing it hands the lock on and restarts it.
        """
        timeout = self.settings.hang_timeout
        if timeout <= 0 or child.state != states.RUNNING or child.name in self.stop_reasons:
            return
        silent_for = now - child.last_heard
        if silent_for > timeout:
            problem = f"sent nothing for {silent_for:.1f} s"
        elif child.role == "leader" and child.leader_pass_age is not None and child.leader_pass_age > timeout:
            problem = f"its leader loop made no pass for {child.leader_pass_age:.1f} s"
        else:
            return
        log.error("gateway %s (pid %s) %s (hang_timeout %g s); killing it", child.name, child.pid, problem, timeout)
        child.error = f"killed as hung: {problem}"
        self.stop_reasons[child.name] = "hung"
        child.state = states.STOPPING
        child.deadline = None
        child.signal_group(signal.SIGKILL)
        self.state_dirty = True

    def _must_wait_for_leader(self, child: GatewayChild, now: float) -> bool:
        """Hold other candidates back until `default` has competed for the lock, for a few seconds at most."""
        if child.name == DEFAULT_PROFILE or not child.profile.dispatch_in_gateway:
            return False
        default = self.children.get(DEFAULT_PROFILE)
        if default is None or not default.profile.dispatch_in_gateway or DEFAULT_PROFILE not in self.wanted:
            return False
        if default.role != "none":
            return False
        default_is_coming = default.state in (states.STARTING, states.RUNNING) or DEFAULT_PROFILE in self.next_start
        return default_is_coming and now < self.leader_hold_until

    # Requests

    def start(self, names: list[str]) -> list[str]:
        started = []
        for name in names:
            child = self.children[name]
            if name not in self.wanted:
                self.wanted.append(name)
            if child.is_active:
                continue
            child.failures = 0
            self._queue_start(name)
            started.append(name)
        self.state_dirty = True
        return started

    def stop(self, names: list[str]) -> list[str]:
        stopped = []
        for name in names:
            child = self.children[name]
            if name in self.wanted:
                self.wanted.remove(name)
            self.next_start.pop(name, None)
            if child.is_active and child.state != states.STOPPING:
                self.stop_reasons[name] = "request"
                child.begin_stop()
            elif not child.is_active:
                child.state = states.STOPPED
            stopped.append(name)
        self.state_dirty = True
        return stopped

    def restart(self, names: list[str]) -> list[str]:
        for name in names:
            child = self.children[name]
            if name not in self.wanted:
                self.wanted.append(name)
            child.failures = 0
            child.profile = self._reload_profile(child.profile)
            self.next_start.pop(name, None)
            if child.is_active:
                if child.state != states.STOPPING:
                    child.begin_stop()
                self.stop_reasons[name] = "restart"
            else:
                self._queue_start(name)
        self.state_dirty = True
        return names

    def _reload_profile(self, profile: Profile) -> Profile:
        for fresh in load_profiles(self.home):
            if fresh.name == profile.name:
                return fresh
        return profile

    def reload(self) -> dict[str, list[str]]:
        """Start new profiles, stop removed ones, restart changed ones; leave the rest alone.

        Log files are reopened too, so a log deleted by hand comes back at once.
        """
        self._reopen_logs()
        fresh = {profile.name: profile for profile in load_profiles(self.home)}
        self.settings = self._load_settings()
        added, removed, changed, errors = [], [], [], []
        settings_error = board_wide_settings_error(self.home)
        if settings_error is not None:
            errors.append(f"the leader keeps its previous board-wide settings: {settings_error.describe()}")

        for name, profile in fresh.items():
            child = self.children.get(name)
            if child is None:
                self._add_child(profile)
                added.append(name)
                self.start([name])
                if profile.error is not None:
                    errors.append(f"profile {name} is not started: {profile.error.describe()}")
            elif profile.fingerprint == child.profile.fingerprint:
                if child.error and child.error.startswith(f"profile {name} keeps running") and profile.error is None:
                    child.error = None  # the files are back to the settings the gateway runs on
            elif profile.fingerprint != child.profile.fingerprint:
                changed.append(name)
                if profile.error is not None and child.is_active:
                    # Keep the gateway that works on its old settings rather than stop it for a typo.
                    message = f"profile {name} keeps running on its previous settings: {profile.error.describe()}"
                    log.error("reload: %s", message)
                    errors.append(message)
                    child.error = message
                    continue
                child.profile = profile
                child.settings = self.settings
                if profile.error is not None:
                    errors.append(f"profile {name} is not started: {profile.error.describe()}")
                if name in self.wanted:
                    self.restart([name])

        for name in list(self.children):
            if name not in fresh:
                removed.append(name)
                self.removed.add(name)
                if self.children[name].is_active:
                    self.stop([name])
                else:
                    self._forget(name)

        log.info("reload: added %s, removed %s, changed %s", added or "none", removed or "none", changed or "none")
        self.state_dirty = True
        return {"added": added, "removed": removed, "changed": changed, "errors": errors}

    def _reopen_logs(self) -> None:
        reopen_file_handlers()
        for child in self.children.values():
            try:
                child.log.reopen()
            except OSError as error:
                log.error("cannot reopen the log of gateway %s at %s: %s", child.name, child.log_path, error)

    def _forget(self, name: str) -> None:
        self.children.pop(name, None)
        self.next_start.pop(name, None)
        self.removed.discard(name)
        if name in self.wanted:
            self.wanted.remove(name)

    def begin_shutdown(self) -> None:
        if self.shutting_down:
            return
        self.shutting_down = True
        self.systemd.notifier.stopping()
        self.next_start.clear()
        for child in self.children.values():
            if child.is_active and child.state != states.STOPPING:
                self.stop_reasons[child.name] = "shutdown"
                child.begin_stop()
            elif child.state in (states.BACKOFF,):
                child.state = states.STOPPED
        self.state_dirty = True

    def _kill_leftover_descendants(self) -> None:
        kill_descendants(ORPHAN_GRACE_SECONDS)
        self._reap()

    # Control socket

    def _accept_control(self) -> None:
        assert self._control is not None
        serve_one_request(self._control, self.handle_request)

    def handle_request(self, request: dict[str, Any]) -> dict[str, Any]:
        command = request.get("command")
        names = request.get("names") or []
        if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
            return {"ok": False, "error": "names must be a list of profile names"}

        if command in ("start", "stop", "restart"):
            if command == "start":
                self._add_new_profiles(names)
            unknown = [name for name in names if name not in self.children]
            if unknown:
                return {"ok": False, "error": f"unknown profile(s): {', '.join(unknown)}; "
                                              f"known: {', '.join(self.children)}"}

        if command == "status":
            return {"ok": True, "status": self.snapshot()}
        if command == "start":
            return {"ok": True, "started": self.start(names or list(self.children))}
        if command == "stop":
            return {"ok": True, "stopped": self.stop(names)}
        if command == "restart":
            return {"ok": True, "restarted": self.restart(names)}
        if command == "reload":
            return {"ok": True, **self.reload()}
        if command == "down":
            self.begin_shutdown()
            return {"ok": True, "pid": os.getpid()}
        return {"ok": False, "error": f"unknown command {command!r}"}

    def _add_new_profiles(self, names: list[str]) -> None:
        missing = [name for name in names if name not in self.children]
        if not missing:
            return
        for profile in load_profiles(self.home):
            if profile.name in missing:
                self._add_child(profile)

    # State

    def snapshot(self) -> dict[str, Any]:
        return {
            "supervisor": {
                "running": True,
                "pid": os.getpid(),
                "start_time": start_time(os.getpid()),
                "started_at": self.started_at,
                "shutting_down": self.shutting_down,
            },
            "profiles": [child.as_dict() for child in self.children.values()],
            "wanted": list(self.wanted),
            "kanban_home": str(self.home.kanban_root),
        }

    def write_state(self, running: bool) -> None:
        snapshot = self.snapshot()
        snapshot["supervisor"]["running"] = running
        try:
            write_json_atomically(self.paths.state_file, snapshot)
        except OSError as error:
            log.error("cannot write the state file %s: %s", self.paths.state_file, error)
            return
        self.state_dirty = False


def _describe_exit(last_exit: dict[str, Any] | None) -> str:
    if not last_exit:
        return "unknown status"
    if last_exit.get("signal"):
        return f"killed by {last_exit['signal']}"
    return f"status {last_exit.get('code')}"


def _has_pending_data(fd: int) -> bool:
    selector = selectors.DefaultSelector()
    try:
        selector.register(fd, selectors.EVENT_READ)
        return bool(selector.select(0))
    except (OSError, ValueError):
        return False
    finally:
        selector.close()
