"""What the dispatcher records when a worker ends without completing or blocking its task itself.

Exit 0 completes the task with the tail of the worker's output as its result.
Exit 75 (EX_TEMPFAIL, Hermes' "rate limited" exit) puts it back to `ready` without
counting a failure. So does a run whose wrapper recorded an interruption by SIGTERM
or SIGINT from outside (as at `hermesd down`), unless the dispatcher sent that signal
itself. Any other exit, a death by signal, a worker that died without an exit
status, a command that could not start and a run past `max_runtime_seconds` each
count one failure. At the failure limit (the task's `max_retries` wins over the
board's `failure_limit`) the task blocks with a `gave_up` event.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any

from kanban import tasks

RATE_LIMIT_EXIT_CODE = 75


@dataclass(frozen=True)
class WorkerEnd:
    """The end of one run, as recorded in the wrapper's status file (or shown by its absence)."""

    pid: int
    claimer: str | None
    status: dict[str, Any] | None
    elapsed_seconds: float
    limit_seconds: int | None
    terminated: bool
    killed: bool = False

    @property
    def interrupted_by(self) -> int | None:
        """The signal that interrupted the run from outside, when the dispatcher did not send it itself."""
        if self.terminated or self.status is None:
            return None
        signal_number = self.status.get("interrupted_by_signal")
        return signal_number if isinstance(signal_number, int) else None

    @property
    def timed_out(self) -> bool:
        if self.limit_seconds is None:
            return False
        return self.terminated or self.elapsed_seconds >= self.limit_seconds


@dataclass(frozen=True)
class Failure:
    """A run that counts as failed: the run outcome, the event written, its payload and the error text."""

    outcome: str
    event_kind: str
    payload: dict[str, Any]
    error: str


def classify_failure(end: WorkerEnd, spawn_hint: str) -> Failure | None:
    """Return the failure that `end` is, or None when it is a success or a requeue (exit 0 or 75, interrupted)."""
    status = end.status
    base = {"pid": end.pid, "claimer": end.claimer}
    if status is not None and status.get("spawn_error"):
        error = f"{status['spawn_error']} ({spawn_hint})"
        return Failure("spawn_failed", "spawn_failed", {"error": error}, error)
    if end.timed_out:
        payload = {"pid": end.pid, "elapsed_seconds": int(end.elapsed_seconds), "limit_seconds": end.limit_seconds,
                   "sigkill": end.killed or bool(status and status.get("signal") == 9)}
        error = f"elapsed {int(end.elapsed_seconds)}s > limit {end.limit_seconds}s"
        return Failure("timed_out", "timed_out", payload, error)
    if end.interrupted_by is not None:
        return None
    if status is None:
        return Failure("crashed", "crashed", base, f"pid {end.pid} not alive (the worker left no exit status)")
    if status.get("signal"):
        signal_number = int(status["signal"])
        payload = {**base, "exit_kind": "signaled", "exit_code": signal_number}
        return Failure("crashed", "crashed", payload, f"pid {end.pid} killed by signal {signal_number}")
    code = status.get("exit_code")
    if code in (0, RATE_LIMIT_EXIT_CODE):
        return None
    payload = {**base, "exit_kind": "nonzero_exit", "exit_code": code}
    return Failure("crashed", "crashed", payload, f"pid {end.pid} exited with code {code}")


def record_end(conn: sqlite3.Connection, task_id: str, run_id: int, end: WorkerEnd, *, failure_limit: int,
               spawn_hint: str) -> str:
    """Apply the exit rules to a running task whose worker ended; return the outcome recorded."""
    failure = classify_failure(end, spawn_hint)
    if failure is not None:
        record_failed_run(conn, task_id, run_id, failure, failure_limit)
        return failure.outcome

    assert end.status is not None
    if end.interrupted_by is not None:
        payload = {"pid": end.pid, "claimer": end.claimer, "reason": "interrupted", "signal": end.interrupted_by}
        tasks.release_claim(conn, task_id, run_id, outcome="reclaimed", event_kind="reclaimed", payload=payload,
                            error=f"pid {end.pid} was interrupted by signal {end.interrupted_by} from outside "
                                  "(for example by hermesd down); requeued without counting a failure")
        return "interrupted"

    if end.status.get("exit_code") == RATE_LIMIT_EXIT_CODE:
        payload = {"pid": end.pid, "claimer": end.claimer, "exit_code": RATE_LIMIT_EXIT_CODE}
        tasks.release_claim(conn, task_id, run_id, outcome="reclaimed", event_kind="rate_limited", payload=payload,
                            error=f"pid {end.pid} exited rate-limited; requeued without counting a failure")
        return "rate_limited"

    result = (end.status.get("tail") or "").strip() or None
    tasks.complete_task(conn, task_id, result=result, expected_run_id=run_id)
    return "completed"


def record_failed_run(conn: sqlite3.Connection, task_id: str, run_id: int, failure: Failure, failure_limit: int) -> bool:
    """Close the run as failed, put the task back to `ready`, and count the failure; True when it gave up."""
    if not tasks.release_claim(conn, task_id, run_id, outcome=failure.outcome, event_kind=failure.event_kind,
                               payload=failure.payload, error=failure.error):
        return False
    return tasks.record_failure(conn, task_id, error=failure.error, trigger_outcome=failure.outcome,
                                failure_limit=failure_limit)
