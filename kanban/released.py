"""Workers that outlive their closed runs, and the files of runs whose wrapper has exited.

A run is closed when its task leaves `running` (completed, blocked, archived or released by
someone other than the worker). Its wrapper may still run: a worker that completed its own
task is usually about to exit, and a worker blocked from outside is not. Each such worker gets
`release_grace_seconds` to exit on its own, then SIGTERM to its process group, then SIGKILL.
The pid and exit-status files on disk let a leader elected after a failover find them too.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from dataclasses import dataclass
from typing import Any

from kanban import tasks
from kanban.home import Home
from kanban.jsonfile import read_json_object
from kanban.store import Board
from kanban.workers import (
    PID_SUFFIX, STATUS_SUFFIX, WorkerFiles, is_alive, kill_orphans, live_wrapper_from_pid_file, runs_directory,
    signal_worker,
)

log = logging.getLogger(__name__)


@dataclass
class ReleasedWorker:
    """A worker that still runs after its run was closed, with the times (epoch seconds) the leader signalled it."""

    task_id: str
    run_id: int
    pid: int
    start_time: float | None
    closed_at: float
    terminated_at: float | None = None
    killed_at: float | None = None



class ReleasedWorkers:
    """Finds workers of closed runs, gives them a grace period, then stops them."""

    def __init__(self, home: Home, release_grace_seconds: float, kill_grace_seconds: float):
        self.home = home
        self.release_grace_seconds = release_grace_seconds
        self.kill_grace_seconds = kill_grace_seconds

    def supervise(self, board: Board, released: dict[int, ReleasedWorker]) -> None:
        """Stop workers that outlive their closed runs, and remove the files of runs whose wrapper has exited."""
        self.scan_run_files(board, released)
        for run_id, worker in list(released.items()):
            if is_alive(worker.pid, worker.start_time):
                self.stop(board, worker)
                continue
            del released[run_id]
            self.clean_up_exited(WorkerFiles.for_run(self.home, board.slug, worker.task_id, run_id), worker.pid,
                                 run_id)
            log.info("worker pid %d of the closed run %d of task %s on board %s has exited", worker.pid, run_id,
                     worker.task_id, board.slug)

    def scan_run_files(self, board: Board, released: dict[int, ReleasedWorker]) -> None:
        """Check the pid and exit status files of closed runs (runs that their task no longer runs).

        A wrapper that still runs is added to `released`, and the files of an
        exited wrapper are removed. Files of open runs are left to `Dispatcher.supervise_running`.
        """
        directory = runs_directory(self.home, board.slug)
        try:
            names = [entry.name for entry in os.scandir(directory)]
        except OSError:
            return
        runs: dict[int, str] = {}
        for name in names:
            stem = name.removesuffix(STATUS_SUFFIX).removesuffix(PID_SUFFIX)
            task_id, _, run_text = stem.rpartition(".")
            if stem != name and task_id and run_text.isdigit():
                runs[int(run_text)] = task_id

        for run_id, task_id in runs.items():
            if run_id in released:
                continue
            row = board.connection.execute(
                "SELECT r.ended_at, r.metadata, t.status, t.current_run_id FROM task_runs r "
                "LEFT JOIN tasks t ON t.id = r.task_id WHERE r.id = ?", (run_id,)).fetchone()
            files = WorkerFiles.for_run(self.home, board.slug, task_id, run_id)
            if row is not None and row[0] is None and row[2] == "running" and row[3] == run_id:
                continue
            identity = hermesd_identity(tasks.decode_json(row[1])) if row is not None else None
            worker = self.live_worker(identity, files)
            if worker is None:
                pid = identity.get("pid") if identity is not None else None
                self.clean_up_exited(files, pid if isinstance(pid, int) else None, run_id)
            else:
                closed_at = float(row[0]) if row is not None and row[0] is not None else time.time()
                self.add(board, released, ReleasedWorker(task_id, run_id, *worker, closed_at=closed_at))

    def live_worker(self, identity: dict[str, Any] | None,
                    files: WorkerFiles) -> tuple[int, float | None] | None:
        """Return the pid and start time of the run's wrapper while it is alive, else None."""
        if identity is not None and isinstance(identity.get("pid"), int):
            pid, start_time = identity["pid"], identity.get("start_time")
            return (pid, start_time) if is_alive(pid, start_time) else None
        return live_wrapper_from_pid_file(files.pid_file)

    def clean_up_exited(self, files: WorkerFiles, pid: int | None, run_id: int) -> None:
        """Remove an exited wrapper's files; kill what is left of its group when it died without a final status."""
        status = read_json_object(files.status)
        if pid is not None and (status is None or status.get("ended_at") is None):
            killed = kill_orphans(pid, run_id)
            if killed:
                log.warning("killed %d leftover process(es) of the dead worker of the closed run %d", killed, run_id)
        files.remove_run_files()

    def add(self, board: Board, released: dict[int, ReleasedWorker], worker: ReleasedWorker) -> None:
        released[worker.run_id] = worker
        remaining = max(0.0, worker.closed_at + self.release_grace_seconds - time.time())
        log.info("worker pid %d of task %s on board %s still runs after its run %d was closed; it has %.0f s to "
                 "exit before it is stopped", worker.pid, worker.task_id, board.slug, worker.run_id, remaining)

    def stop(self, board: Board, worker: ReleasedWorker) -> None:
        """Send SIGTERM once the release grace time has passed, and SIGKILL once the kill grace time has too."""
        current = time.time()
        if worker.terminated_at is None:
            if current - worker.closed_at < self.release_grace_seconds:
                return
            log.warning("worker pid %d of task %s on board %s still runs %.0f s after its run %d was closed; "
                        "sending SIGTERM", worker.pid, worker.task_id, board.slug, current - worker.closed_at,
                        worker.run_id)
            signal_worker(worker.pid, worker.start_time, signal.SIGTERM)
            worker.terminated_at = current
        elif worker.killed_at is None and current - worker.terminated_at >= self.kill_grace_seconds:
            log.warning("worker pid %d of task %s ignored SIGTERM for %.1f s; sending SIGKILL", worker.pid,
                        worker.task_id, self.kill_grace_seconds)
            signal_worker(worker.pid, worker.start_time, signal.SIGKILL)
            worker.killed_at = current

    def earlier_worker_alive(self, conn: Any, board: Board, task_id: str,
                             released: dict[int, ReleasedWorker]) -> bool:
        """True when a worker of an earlier run of the task is still alive; it is then supervised as released."""
        if any(worker.task_id == task_id for worker in released.values()):
            return True
        rows = conn.execute("SELECT id, ended_at, metadata FROM task_runs WHERE task_id = ? ORDER BY id",
                            (task_id,)).fetchall()
        for run_id, ended_at, metadata in rows:
            identity = hermesd_identity(tasks.decode_json(metadata))
            if identity is None:
                continue
            worker = self.live_worker(identity, WorkerFiles.for_run(self.home, board.slug, task_id, run_id))
            if worker is not None:
                closed_at = float(ended_at) if ended_at is not None else time.time()
                self.add(board, released, ReleasedWorker(task_id, run_id, *worker, closed_at=closed_at))
                return True
        return False


def hermesd_identity(metadata: Any) -> dict[str, Any] | None:
    """Return hermesd's worker identity from a run's metadata, or None for a run that hermesd did not start."""
    identity = metadata.get("hermesd") if isinstance(metadata, dict) else None
    return identity if isinstance(identity, dict) else None
