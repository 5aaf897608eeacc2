"""Worker processes: where their files go, their environment, starting them, and telling whether they live.

Each worker runs under the `kanban.runner` wrapper in a session of its own, so the
wrapper's pid is also its process group id. A worker is identified by the wrapper's
pid together with the kernel's start time of that process, so a pid that the kernel
reused for another process is never taken for the worker.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from kanban.home import DEFAULT_BOARD, Home
from kanban.jsonfile import read_json_object
from kanban.runner import DEFAULT_MAX_LOG_BYTES

log = logging.getLogger(__name__)

# Two start times of the same process read by two processes can differ by float rounding only.
START_TIME_TOLERANCE = 0.05

# Maximum difference between a process start time (psutil derives it from the boot time, which the
# kernel reports in whole seconds) and a wall-clock time.time() reading of the same instant.
WALL_CLOCK_TOLERANCE = 1.0

STATUS_SUFFIX = ".exit"
PID_SUFFIX = ".pid"


def board_directory(home: Home, slug: str) -> Path:
    """Return the directory of a board's other files: `<root>/kanban` for the default board, else the board's own."""
    if slug == DEFAULT_BOARD:
        return home.kanban_root / "kanban"
    return home.boards_dir / slug


def runs_directory(home: Home, slug: str) -> Path:
    """Return the directory where the wrappers of a board's workers write their pid and exit status files."""
    return board_directory(home, slug) / "logs" / "runs"


@dataclass(frozen=True)
class WorkerFiles:
    """The per-task log and the per-run files that the wrapper writes."""

    log: Path
    status: Path
    pid_file: Path

    @classmethod
    def for_run(cls, home: Home, slug: str, task_id: str, run_id: int) -> WorkerFiles:
        runs = runs_directory(home, slug)
        return cls(
            log=board_directory(home, slug) / "logs" / f"{task_id}.log",
            status=runs / f"{task_id}.{run_id}{STATUS_SUFFIX}",
            pid_file=runs / f"{task_id}.{run_id}{PID_SUFFIX}",
        )

    def as_metadata(self) -> dict[str, str]:
        return {"log": str(self.log), "status_file": str(self.status), "pid_file": str(self.pid_file)}

    def remove_run_files(self) -> None:
        for path in (self.status, self.pid_file):
            try:
                path.unlink()
            except FileNotFoundError:
                pass


@dataclass(frozen=True)
class WorkerSpec:
    """Everything needed to start one worker."""

    task_id: str
    board: str
    run_id: int
    profile: str
    command: list[str]
    environment: dict[str, str]
    workspace: Path
    files: WorkerFiles
    max_log_bytes: int = DEFAULT_MAX_LOG_BYTES


@dataclass
class WorkerProcess:
    """A started wrapper: its pid, the kernel's start time of it, and the Popen when this process is its parent."""

    pid: int
    start_time: float | None
    popen: subprocess.Popen[bytes] | None = None


def worker_environment(base: Mapping[str, str], *, profile_home: Path, profile: str, task_id: str, board: str,
                       database: Path, run_id: int, claim_lock: str, workspace: Path) -> dict[str, str]:
    """Build the environment Hermes gives its workers, on top of `base`."""
    environment = dict(base)
    environment.update({
        "HERMES_HOME": str(profile_home),
        "HERMES_PROFILE": profile,
        "HERMES_KANBAN_TASK": task_id,
        "HERMES_KANBAN_BOARD": board,
        "HERMES_KANBAN_DB": str(database),
        "HERMES_KANBAN_RUN_ID": str(run_id),
        "HERMES_KANBAN_CLAIM_LOCK": claim_lock,
        "HERMES_KANBAN_WORKSPACE": str(workspace),
    })
    return environment


def missing_program(program: str, environment: Mapping[str, str]) -> str | None:
    """Return why `program` cannot be run (not found on PATH, not executable), or None when it can."""
    if os.sep in program:
        if not os.path.isfile(program):
            return "no such file"
        if not os.access(program, os.X_OK):
            return "not executable"
        return None
    if shutil.which(program, path=environment.get("PATH", os.defpath)) is None:
        return f"not found on PATH ({environment.get('PATH', os.defpath)})"
    return None


def process_start_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def launch_worker(spec: WorkerSpec) -> WorkerProcess:
    """Start the wrapper for `spec` in a new session; raise OSError when it cannot start."""
    spec.workspace.mkdir(parents=True, exist_ok=True)
    spec.files.status.parent.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "kanban.runner",
        "--log", str(spec.files.log), "--status", str(spec.files.status), "--pid-file", str(spec.files.pid_file),
        "--max-log-bytes", str(spec.max_log_bytes), "--", *spec.command,
    ]
    popen = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             env=spec.environment, cwd=str(spec.workspace), start_new_session=True, close_fds=True)
    return WorkerProcess(pid=popen.pid, start_time=process_start_time(popen.pid), popen=popen)


def is_alive(pid: int, start_time: float | None) -> bool:
    """True while `pid` is the same running process (not a zombie, not a reused pid)."""
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        created = process.create_time()
    except psutil.Error:
        return False
    return start_time is None or abs(created - start_time) <= START_TIME_TOLERANCE


def live_wrapper_from_pid_file(path: Path) -> tuple[int, float] | None:
    """Return the pid and start time of the live wrapper that wrote the pid file `path`, or None.

    A live process with that pid counts only when it started before the file was
    written, so a pid that the kernel gave to a later process is not taken for the wrapper.
    """
    written = read_json_object(path)
    if written is None or not isinstance(written.get("pid"), int) or not isinstance(written.get("time"), (int, float)):
        return None
    pid = written["pid"]
    start_time = process_start_time(pid)
    if start_time is None or start_time > written["time"] + WALL_CLOCK_TOLERANCE or not is_alive(pid, start_time):
        return None
    return pid, start_time


def signal_worker(pid: int, start_time: float | None, signum: int) -> bool:
    """Send `signum` to the worker's whole process group; False when the worker is gone."""
    if not is_alive(pid, start_time):
        return False
    try:
        os.killpg(pid, signum)
    except ProcessLookupError:
        return False
    except PermissionError as error:
        log.error("cannot send %s to worker process group %d: %s", signal.Signals(signum).name, pid, error)
        return False
    return True


def kill_orphans(process_group: int, run_id: int) -> int:
    """SIGKILL what is left of a dead wrapper's process group; return how many processes were killed.

    Only processes of that group whose environment names the same run are killed, so
    a group id that the kernel has since given to an unrelated process is left alone.
    """
    killed = 0
    for process in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(process.pid) != process_group:
                continue
            if process.environ().get("HERMES_KANBAN_RUN_ID") != str(run_id):
                continue
            process.kill()
            killed += 1
        except (psutil.Error, ProcessLookupError, PermissionError):
            continue
    return killed
