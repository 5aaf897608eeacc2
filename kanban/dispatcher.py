"""The dispatcher: the leader service that runs the tasks of every board.

On each pass, for each board, it first supervises the running tasks. It adopts live
workers that an earlier leader started, applies the exit rules to workers that ended,
reclaims claims whose worker never started or whose claim expired, and stops workers
past `max_runtime_seconds` with SIGTERM and then SIGKILL. It also stops workers
that still run after their run was closed by someone else (a user's `block` or
`complete`, `archive`, Hermes' own CLI, or the worker itself): each gets
`release_grace_seconds` to exit on its own, then SIGTERM, then SIGKILL. Then it
promotes `todo` tasks whose parents are done, and claims `ready` tasks by priority
then age, within `max_in_progress` (all boards together) and
`max_in_progress_per_profile`, starting a worker for each. A task whose worker exited
75 (rate limited) is not claimed again for `rate_limit_cooldown_seconds`. It never
claims a task while a worker of an earlier run of that task is alive, so a task never
has two workers at once. It never touches `triage`, `blocked`, `scheduled`, `review`, `done`
or `archived` tasks.

The leader calls `run_pass` at least once a second and at once when the watcher
reports a change. A board whose database did not change and that has no running task
is skipped until `dispatch_interval_seconds` have passed, so an idle leader only reads
one `PRAGMA data_version` per board per pass. Every write goes through `Board.write()`,
so a leader that another leader fenced out stops before it writes.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kanban import outcomes, tasks
from kanban.home import Home
from kanban.jsonfile import read_json_object
from kanban.profiles import ConfigError
from kanban.released import ReleasedWorker, ReleasedWorkers, hermesd_identity
from kanban.settings import WORKER_COMMAND_KEY, DispatchSettings, SettingsCache, worker_command
from kanban.store import Board
from kanban.watcher import ChangeWatcher
from kanban.workers import (
    STATUS_SUFFIX, WorkerFiles, WorkerProcess, WorkerSpec, board_directory, is_alive, kill_orphans, launch_worker,
    missing_program, process_start_time, runs_directory, signal_worker, worker_environment,
)

log = logging.getLogger(__name__)

# Time a worker gets between SIGTERM and SIGKILL once it is past its max_runtime_seconds.
KILL_GRACE_SECONDS = 10.0

# Time after a claim within which a worker that has not yet recorded its pid is still starting.
START_GRACE_SECONDS = 10.0

# Time a worker gets to exit on its own after its run was closed (by itself, a user or Hermes' CLI)
# before the leader sends it SIGTERM. A worker that completes or blocks its own task usually exits
# within this time, so its last output is kept.
RELEASE_GRACE_SECONDS = 10.0

# Time a task whose worker exited 75 (rate limited) waits in `ready` before it is claimed again.
# Without it the task would be claimed and its worker started again on the next pass, about once
# a second.
RATE_LIMIT_COOLDOWN_SECONDS = 30.0

DATABASE_FILES = ("kanban.db", "kanban.db-wal")

Launcher = Callable[[WorkerSpec], WorkerProcess]


@dataclass
class BoardState:
    """The dispatcher's memory of one board between passes."""

    data_version: int | None = None
    last_full_pass: float = 0.0
    has_running: bool = True
    unassigned_logged: set[str] = field(default_factory=set)
    released: dict[int, ReleasedWorker] = field(default_factory=dict)
    # Rate-limited task ids and the time.monotonic() at which they may be claimed again.
    # NOTE: this is only in the leader's memory, so a new leader may claim such a task sooner.
    cooldowns: dict[str, float] = field(default_factory=dict)


class LimitReached(Exception):
    """`max_in_progress` is reached: no more claims on any board in this pass."""


class Dispatcher:
    """The `dispatcher` leader service."""

    name = "dispatcher"

    def __init__(self, home: Home, wake: threading.Event | None = None, *, launcher: Launcher = launch_worker,
                 kill_grace_seconds: float = KILL_GRACE_SECONDS, start_grace_seconds: float = START_GRACE_SECONDS,
                 release_grace_seconds: float = RELEASE_GRACE_SECONDS,
                 rate_limit_cooldown_seconds: float = RATE_LIMIT_COOLDOWN_SECONDS):
        self.home = home
        self.settings = SettingsCache(home)
        self.launcher = launcher
        self.kill_grace_seconds = kill_grace_seconds
        self.start_grace_seconds = start_grace_seconds
        self.release_grace_seconds = release_grace_seconds
        self.rate_limit_cooldown_seconds = rate_limit_cooldown_seconds
        self.released = ReleasedWorkers(home, release_grace_seconds, kill_grace_seconds)
        self.claim_lock = f"{socket.gethostname()}:{os.getpid()}"
        self.children: dict[int, subprocess.Popen[bytes]] = {}
        self.known_runs: set[int] = set()
        self.states: dict[str, BoardState] = {}
        self.watcher: ChangeWatcher | None = None
        if wake is not None:
            self.watcher = ChangeWatcher(wake.set)
            self.watcher.start()

    # The pass

    def run_pass(self, boards: dict[str, Board]) -> None:
        settings = self.settings.get()
        self.reap_children()
        claims_open = True
        for board in boards.values():
            self.watch(board)
            state = self.states.setdefault(board.slug, BoardState())
            if not self.needs_pass(board, state, settings):
                continue
            running = self.supervise_running(board, settings)
            self.released.supervise(board, state.released)
            self.promote(board)
            if claims_open:
                try:
                    running += self.claim_ready(board, boards, settings, state)
                except LimitReached:
                    claims_open = False
                    running += 1
            # A board with a task in its cooldown keeps getting passes, so the task starts when the cooldown ends.
            state.has_running = running > 0 or bool(state.released) or bool(state.cooldowns)

    def needs_pass(self, board: Board, state: BoardState, settings: DispatchSettings) -> bool:
        version = board.data_version()
        current = time.monotonic()
        due = current - state.last_full_pass >= settings.dispatch_interval_seconds
        if version == state.data_version and not due and not state.has_running:
            return False
        state.data_version = version
        state.last_full_pass = current
        return True

    def stop(self) -> None:
        """Stop watching; workers keep running so that the next leader adopts them."""
        if self.watcher is not None:
            self.watcher.stop()
            self.watcher = None
        if self.children:
            log.info("leaving %d worker(s) running for the next leader", len(self.children))
        self.children.clear()

    def watch(self, board: Board) -> None:
        if self.watcher is None:
            return
        self.watcher.watch(board.path.parent, lambda name: name in DATABASE_FILES)
        self.watcher.watch(runs_directory(self.home, board.slug), lambda name: name.endswith(STATUS_SUFFIX))

    def reap_children(self) -> None:
        for run_id, popen in list(self.children.items()):
            if popen.poll() is not None:
                del self.children[run_id]

    # Running tasks

    def supervise_running(self, board: Board, settings: DispatchSettings) -> int:
        """Check every running task of the board; return how many are still running afterwards."""
        rows = board.connection.execute("SELECT id FROM tasks WHERE status = 'running'").fetchall()
        still_running = 0
        for (task_id,) in rows:
            task = tasks.get_task(board.connection, task_id)
            if task is None or task["status"] != "running":
                continue
            run = tasks.get_run(board.connection, task["current_run_id"]) if task["current_run_id"] else None
            identity = hermesd_identity(run["metadata"]) if run is not None else None
            if run is None or identity is None:
                still_running += self.check_foreign_claim(board, task, run)
            else:
                still_running += self.supervise_worker(board, task, run, identity, settings)
        return still_running

    def supervise_worker(self, board: Board, task: dict[str, Any], run: dict[str, Any], identity: dict[str, Any],
                         settings: DispatchSettings) -> int:
        pid, start_time = identity.get("pid"), identity.get("start_time")
        files = WorkerFiles(Path(identity["log"]), Path(identity["status_file"]), Path(identity["pid_file"]))
        if pid is None:
            pid, start_time = self.find_unrecorded_worker(board, task, run, identity, files)
            if pid is None:
                return 1 if self.still_starting(run) else self.reclaim_unstarted(board, task, run)

        if is_alive(pid, start_time):
            if run["id"] not in self.known_runs:
                self.known_runs.add(run["id"])
                if run["id"] not in self.children:
                    log.info("adopted worker pid %d of task %s (run %d) on board %s", pid, task["id"], run["id"],
                             board.slug)
            self.enforce_runtime(board, task, run, identity, pid, start_time)
            self.extend_expired_claim(board, task, run)
            return 1

        self.finish(board, task, run, identity, pid, files, settings)
        return 0

    def find_unrecorded_worker(self, board: Board, task: dict[str, Any], run: dict[str, Any],
                               identity: dict[str, Any], files: WorkerFiles) -> tuple[int | None, float | None]:
        """Find a worker that started but whose pid the leader that started it did not record, and record it."""
        written = read_json_object(files.pid_file)
        if written is None or not isinstance(written.get("pid"), int):
            return None, None
        pid = written["pid"]
        start_time = process_start_time(pid)
        with board.write() as conn:
            tasks.record_spawn(conn, task["id"], run["id"], pid, {"hermesd": {**identity, "pid": pid,
                                                                              "start_time": start_time}})
        log.info("found worker pid %d of task %s (run %d) from its pid file", pid, task["id"], run["id"])
        return pid, start_time

    def still_starting(self, run: dict[str, Any]) -> bool:
        return time.time() - run["started_at"] < self.start_grace_seconds

    def reclaim_unstarted(self, board: Board, task: dict[str, Any], run: dict[str, Any]) -> int:
        payload = {"stale_lock": task["claim_lock"], "worker_pid": None, "claim_expires": task["claim_expires"],
                   "now": tasks.now(), "reason": "worker_never_started"}
        with board.write() as conn:
            tasks.release_claim(conn, task["id"], run["id"], outcome="reclaimed", event_kind="reclaimed",
                                payload=payload, error="the leader that claimed the task stopped before its worker started")
        log.warning("reclaimed task %s on board %s: its worker never started", task["id"], board.slug)
        return 0

    def check_foreign_claim(self, board: Board, task: dict[str, Any], run: dict[str, Any] | None) -> int:
        """Reclaim an expired claim that hermesd did not make (Hermes' own CLI or dispatcher); extend a live one."""
        expires = task["claim_expires"]
        if expires is None or expires >= tasks.now():
            return 1
        run_id = run["id"] if run else None
        if task["worker_pid"] and is_alive(task["worker_pid"], None):
            if run_id is not None:
                with board.write() as conn:
                    tasks.extend_claim(conn, task["id"], run_id, reason="pid_alive")
            return 1
        payload = {"stale_lock": task["claim_lock"], "worker_pid": task["worker_pid"], "claim_expires": expires,
                   "now": tasks.now()}
        with board.write() as conn:
            tasks.release_claim(conn, task["id"], run_id, outcome="reclaimed", event_kind="reclaimed", payload=payload,
                                error=f"stale_lock={task['claim_lock']}")
        log.info("reclaimed the expired claim %s of task %s on board %s", task["claim_lock"], task["id"], board.slug)
        return 0

    def extend_expired_claim(self, board: Board, task: dict[str, Any], run: dict[str, Any]) -> None:
        if task["claim_expires"] is not None and task["claim_expires"] < tasks.now():
            with board.write() as conn:
                tasks.extend_claim(conn, task["id"], run["id"], reason="pid_alive")

    def enforce_runtime(self, board: Board, task: dict[str, Any], run: dict[str, Any], identity: dict[str, Any],
                        pid: int, start_time: float | None) -> None:
        """Send SIGTERM to a worker past `max_runtime_seconds`, and SIGKILL once the grace time has passed too."""
        limit = task["max_runtime_seconds"]
        if limit is None or time.time() - run["started_at"] <= limit:
            return
        terminated_at = identity.get("terminated_at")
        if terminated_at is None:
            log.warning("task %s on board %s ran past its %d s limit; stopping worker pid %d", task["id"], board.slug,
                        limit, pid)
            signal_worker(pid, start_time, signal.SIGTERM)
            with board.write() as conn:
                tasks.update_run_metadata(conn, run["id"], {"hermesd": {**identity, "terminated_at": time.time()}})
        elif time.time() - terminated_at >= self.kill_grace_seconds and not identity.get("killed_at"):
            log.warning("worker pid %d of task %s ignored SIGTERM for %.1f s; sending SIGKILL", pid, task["id"],
                        self.kill_grace_seconds)
            signal_worker(pid, start_time, signal.SIGKILL)
            with board.write() as conn:
                tasks.update_run_metadata(conn, run["id"], {"hermesd": {**identity, "killed_at": time.time()}})

    def finish(self, board: Board, task: dict[str, Any], run: dict[str, Any], identity: dict[str, Any], pid: int,
               files: WorkerFiles, settings: DispatchSettings) -> None:
        """Apply the exit rules to a worker that is gone."""
        status = read_json_object(files.status)
        if status is None or status.get("ended_at") is None:
            killed = kill_orphans(pid, run["id"])
            if killed:
                log.warning("killed %d leftover process(es) of the dead worker of task %s", killed, task["id"])
        ended = status.get("ended_at") if status else None
        end = outcomes.WorkerEnd(
            pid=pid, claimer=task["claim_lock"], status=status,
            elapsed_seconds=(ended or time.time()) - run["started_at"],
            limit_seconds=task["max_runtime_seconds"], terminated="terminated_at" in identity,
            killed="killed_at" in identity,
        )
        hint = f"{WORKER_COMMAND_KEY} in {identity.get('command_source') or 'the profile config.yaml'}"
        with board.write() as conn:
            outcome = outcomes.record_end(conn, task["id"], run["id"], end, failure_limit=settings.failure_limit,
                                          spawn_hint=hint)
            new_status = tasks.require_task(conn, task["id"])["status"]
        log.info("worker pid %d of task %s on board %s ended: %s; the task is %s", pid, task["id"], board.slug,
                 outcome, new_status)
        if outcome == "rate_limited":
            state = self.states.setdefault(board.slug, BoardState())
            state.cooldowns[task["id"]] = time.monotonic() + self.rate_limit_cooldown_seconds
            log.info("task %s on board %s waits %g s before it is claimed again", task["id"], board.slug,
                     self.rate_limit_cooldown_seconds)
        files.remove_run_files()
        self.children.pop(run["id"], None)

    # Promotion and claims

    def promote(self, board: Board) -> None:
        if board.connection.execute("SELECT 1 FROM tasks WHERE status = 'todo' LIMIT 1").fetchone() is None:
            return
        with board.write() as conn:
            promoted = tasks.promote_ready(conn)
        if promoted:
            log.info("promoted %s to ready on board %s", ", ".join(promoted), board.slug)

    def claim_ready(self, board: Board, boards: dict[str, Board], settings: DispatchSettings,
                    state: BoardState) -> int:
        """Claim ready tasks and start their workers; return how many started. Raise LimitReached when full."""
        ready = board.connection.execute(
            "SELECT id, assignee FROM tasks WHERE status = 'ready' ORDER BY priority DESC, created_at, id").fetchall()
        current = time.monotonic()
        for task_id, until in list(state.cooldowns.items()):
            if until <= current:
                del state.cooldowns[task_id]
        started = 0
        for task_id, assignee in ready:
            if task_id in state.cooldowns:
                continue
            profile = assignee or settings.default_assignee
            if not profile:
                if task_id not in state.unassigned_logged:
                    state.unassigned_logged.add(task_id)
                    log.warning("task %s on board %s is ready but has no assignee and kanban.default_assignee is "
                                "not set; it waits until someone assigns it", task_id, board.slug)
                continue
            claim = self.claim(board, boards, task_id, profile, settings, state)
            if claim is not None:
                self.start_worker(board, task_id, profile, *claim, settings)
                started += 1
        return started

    def claim(self, board: Board, boards: dict[str, Board], task_id: str, profile: str,
              settings: DispatchSettings, state: BoardState) -> tuple[int, dict[str, Any]] | None:
        """Claim one ready task within the limits; return its run id and hermesd's run metadata, or None.

        A task with a live worker from an earlier run is not claimed. That worker is
        handed to `ReleasedWorkers`, and the task waits until it has exited.
        """
        others = [other for other in boards.values() if other is not board]
        with board.write() as conn:
            row = conn.execute("SELECT status, claim_lock, assignee, workspace_path FROM tasks WHERE id = ?",
                               (task_id,)).fetchone()
            if row is None or row[0] != "ready" or row[1] is not None:
                return None
            if not self.has_capacity(conn, others, profile, settings):
                return None
            if self.released.earlier_worker_alive(conn, board, task_id, state.released):
                return None
            if row[2] is None:
                tasks.assign_task(conn, task_id, profile)
            workspace = Path(row[3]) if row[3] else board_directory(self.home, board.slug) / "workspaces" / task_id
            run_id = tasks.claim_task(conn, task_id, self.claim_lock)
            if run_id is None:
                return None
            if row[3] is None:
                conn.execute("UPDATE tasks SET workspace_path = ? WHERE id = ?", (str(workspace), task_id))
            files = WorkerFiles.for_run(self.home, board.slug, task_id, run_id)
            identity = {**files.as_metadata(), "workspace": str(workspace), "pid": None, "start_time": None}
            tasks.update_run_metadata(conn, run_id, {"hermesd": identity})
        return run_id, identity

    def has_capacity(self, conn: Any, others: list[Board], profile: str, settings: DispatchSettings) -> bool:
        """Check the limits inside the claim's transaction; raise LimitReached when the board-wide one is reached."""
        total = conn.execute("SELECT count(*) FROM tasks WHERE status = 'running'").fetchone()[0]
        mine = conn.execute("SELECT count(*) FROM tasks WHERE status = 'running' AND assignee = ?",
                            (profile,)).fetchone()[0]
        for other in others:
            total += other.connection.execute("SELECT count(*) FROM tasks WHERE status = 'running'").fetchone()[0]
            mine += other.connection.execute("SELECT count(*) FROM tasks WHERE status = 'running' AND assignee = ?",
                                             (profile,)).fetchone()[0]
        if settings.max_in_progress is not None and total >= settings.max_in_progress:
            raise LimitReached()
        return settings.max_in_progress_per_profile is None or mine < settings.max_in_progress_per_profile

    # Starting workers

    def start_worker(self, board: Board, task_id: str, profile: str, run_id: int, identity: dict[str, Any],
                     settings: DispatchSettings) -> None:
        try:
            command = worker_command(self.home, profile)
        except ConfigError as error:
            self.fail_start(board, task_id, run_id, error.describe(), settings)
            return
        argv = command.render(task_id, board.slug, profile)
        identity = {**identity, "command_source": str(command.source)}
        workspace = Path(identity["workspace"])
        environment = worker_environment(
            os.environ, profile_home=self.home.profile_dir(profile), profile=profile, task_id=task_id,
            board=board.slug, database=board.path, run_id=run_id, claim_lock=self.claim_lock, workspace=workspace)

        problem = missing_program(argv[0], environment)
        if problem:
            self.fail_start(board, task_id, run_id, f"worker command {argv[0]!r}: {problem}. Install it or set "
                            f"{WORKER_COMMAND_KEY} in {command.source}", settings)
            return
        files = WorkerFiles(Path(identity["log"]), Path(identity["status_file"]), Path(identity["pid_file"]))
        spec = WorkerSpec(task_id=task_id, board=board.slug, run_id=run_id, profile=profile, command=argv,
                          environment=environment, workspace=workspace, files=files)
        try:
            process = self.launcher(spec)
        except OSError as error:
            self.fail_start(board, task_id, run_id, f"cannot start worker command {argv[0]!r}: {error} "
                            f"({WORKER_COMMAND_KEY} in {command.source})", settings)
            return
        self.record_started(board, task_id, run_id, identity, process)

    def record_started(self, board: Board, task_id: str, run_id: int, identity: dict[str, Any],
                       process: WorkerProcess) -> None:
        if process.popen is not None:
            self.children[run_id] = process.popen
        self.known_runs.add(run_id)
        identity = {**identity, "pid": process.pid, "start_time": process.start_time}
        with board.write() as conn:
            recorded = tasks.record_spawn(conn, task_id, run_id, process.pid, {"hermesd": identity})
        if recorded:
            log.info("started worker pid %d for task %s (run %d) on board %s", process.pid, task_id, run_id,
                     board.slug)
        else:
            log.warning("task %s changed while its worker started; stopping worker pid %d", task_id, process.pid)
            signal_worker(process.pid, process.start_time, signal.SIGTERM)

    def fail_start(self, board: Board, task_id: str, run_id: int, message: str, settings: DispatchSettings) -> None:
        failure = outcomes.Failure("spawn_failed", "spawn_failed", {"error": message}, message)
        with board.write() as conn:
            gave_up = outcomes.record_failed_run(conn, task_id, run_id, failure, settings.failure_limit)
        log.error("cannot start the worker of task %s on board %s%s: %s", task_id, board.slug,
                  " (gave up)" if gave_up else "", message)

    # Workers of closed runs
