"""Task operations on a board database, writing the rows Hermes Agent 0.19 writes.

Every function takes a connection that is already inside a write transaction
(`Board.write()` in the leader, `Board.transaction()` in the CLI), so a caller can
group several operations atomically. Every status change appends a `task_events` row
and every attempt gets a `task_runs` row. The event kinds and payload keys are those
of Hermes Agent's own `kanban_db` module (`created`, `promoted`, `claimed`, `spawned`,
`completed`, `blocked`, `crashed`, `timed_out`, `spawn_failed`, `gave_up`,
`reclaimed` and others), so `hermes kanban` and its notifier read them as their own.
Timestamps are integer epoch seconds and task ids are `t_` plus 8 hex digits, as in Hermes.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import time
from typing import Any

DONE_STATUSES = ("done", "archived")

# How long a claim lasts before the dispatcher may reclaim it (Hermes' default TTL).
CLAIM_TTL_SECONDS = 15 * 60

# Maximum length of the error text kept on a task or a run, as in Hermes.
ERROR_LIMIT = 500
SUMMARY_LIMIT = 400


class TaskError(Exception):
    """A task operation that cannot be applied: unknown task, invalid transition or argument."""


def now() -> int:
    return int(time.time())


def new_task_id() -> str:
    return f"t_{secrets.token_hex(4)}"


def _json_or_null(value: Any) -> str | None:
    return json.dumps(value, ensure_ascii=False) if value else None


def decode_json(text: str | None) -> Any:
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def first_line(text: str | None, limit: int = SUMMARY_LIMIT) -> str | None:
    lines = (text or "").strip().splitlines()
    return lines[0][:limit] if lines else None


def _dicts(cursor: sqlite3.Cursor) -> list[dict[str, Any]]:
    names = [column[0] for column in cursor.description]
    return [dict(zip(names, row)) for row in cursor.fetchall()]


def _one(conn: sqlite3.Connection, sql: str, parameters: tuple[Any, ...] = ()) -> dict[str, Any] | None:
    rows = _dicts(conn.execute(sql, parameters))
    return rows[0] if rows else None


# Reads

def get_task(conn: sqlite3.Connection, task_id: str) -> dict[str, Any] | None:
    return _one(conn, "SELECT * FROM tasks WHERE id = ?", (task_id,))


def require_task(conn: sqlite3.Connection, task_id: str) -> dict[str, Any]:
    task = get_task(conn, task_id)
    if task is None:
        raise TaskError(f"task {task_id} not found")
    return task


def list_tasks(conn: sqlite3.Connection, status: str | None = None, assignee: str | None = None,
               include_archived: bool = False) -> list[dict[str, Any]]:
    clauses, parameters = [], []
    if status is not None:
        clauses.append("status = ?")
        parameters.append(status)
    elif not include_archived:
        clauses.append("status != 'archived'")
    if assignee is not None:
        clauses.append("assignee = ?")
        parameters.append(assignee)
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    return _dicts(conn.execute(f"SELECT * FROM tasks {where} ORDER BY priority DESC, created_at, id",
                               tuple(parameters)))


def parent_ids(conn: sqlite3.Connection, task_id: str) -> list[str]:
    rows = conn.execute("SELECT parent_id FROM task_links WHERE child_id = ? ORDER BY parent_id", (task_id,))
    return [row[0] for row in rows]


def child_ids(conn: sqlite3.Connection, task_id: str) -> list[str]:
    rows = conn.execute("SELECT child_id FROM task_links WHERE parent_id = ? ORDER BY child_id", (task_id,))
    return [row[0] for row in rows]


def parents_done(conn: sqlite3.Connection, task_id: str) -> bool:
    row = conn.execute(
        "SELECT 1 FROM task_links l JOIN tasks p ON p.id = l.parent_id "
        "WHERE l.child_id = ? AND p.status NOT IN ('done', 'archived') LIMIT 1", (task_id,)).fetchone()
    return row is None


def list_events(conn: sqlite3.Connection, task_id: str | None = None, after_id: int = 0,
                limit: int | None = None) -> list[dict[str, Any]]:
    sql = "SELECT * FROM task_events WHERE id > ?"
    parameters: list[Any] = [after_id]
    if task_id is not None:
        sql += " AND task_id = ?"
        parameters.append(task_id)
    sql += " ORDER BY id"
    if limit is not None:
        sql += " LIMIT ?"
        parameters.append(limit)
    events = _dicts(conn.execute(sql, tuple(parameters)))
    for event in events:
        event["payload"] = decode_json(event["payload"])
    return events


def list_runs(conn: sqlite3.Connection, task_id: str) -> list[dict[str, Any]]:
    runs = _dicts(conn.execute("SELECT * FROM task_runs WHERE task_id = ? ORDER BY started_at, id", (task_id,)))
    for run in runs:
        run["metadata"] = decode_json(run["metadata"])
    return runs


def get_run(conn: sqlite3.Connection, run_id: int) -> dict[str, Any] | None:
    run = _one(conn, "SELECT * FROM task_runs WHERE id = ?", (run_id,))
    if run is not None:
        run["metadata"] = decode_json(run["metadata"])
    return run


def list_comments(conn: sqlite3.Connection, task_id: str) -> list[dict[str, Any]]:
    return _dicts(conn.execute("SELECT * FROM task_comments WHERE task_id = ? ORDER BY created_at, id", (task_id,)))


def board_stats(conn: sqlite3.Connection) -> dict[str, Any]:
    """Counts per status and per assignee (archived left out) and the age of the oldest ready task."""
    by_status = {status: count for status, count in conn.execute(
        "SELECT status, count(*) FROM tasks WHERE status != 'archived' GROUP BY status")}
    by_assignee: dict[str, dict[str, int]] = {}
    for assignee, status, count in conn.execute(
            "SELECT assignee, status, count(*) FROM tasks WHERE status != 'archived' AND assignee IS NOT NULL "
            "GROUP BY assignee, status"):
        by_assignee.setdefault(assignee, {})[status] = count
    oldest = conn.execute("SELECT min(created_at) FROM tasks WHERE status = 'ready'").fetchone()[0]
    current = now()
    return {
        "by_status": by_status,
        "by_assignee": by_assignee,
        "oldest_ready_age_seconds": None if oldest is None else current - int(oldest),
        "now": current,
    }


# Events and runs

def append_event(conn: sqlite3.Connection, task_id: str, kind: str, payload: dict[str, Any] | None = None,
                 run_id: int | None = None) -> None:
    conn.execute("INSERT INTO task_events (task_id, run_id, kind, payload, created_at) VALUES (?, ?, ?, ?, ?)",
                 (task_id, run_id, kind, _json_or_null(payload), now()))


def end_run(conn: sqlite3.Connection, task_id: str, *, outcome: str, status: str | None = None,
            summary: str | None = None, error: str | None = None,
            metadata: dict[str, Any] | None = None) -> int | None:
    """Close the task's current run with `outcome`; return its id, or None when no run was open.

    `metadata` is merged into the run's existing metadata (hermesd keeps its worker
    identity there), so closing a run never loses it.
    """
    row = conn.execute("SELECT current_run_id FROM tasks WHERE id = ?", (task_id,)).fetchone()
    run_id = row[0] if row else None
    if run_id is None:
        return None
    existing = conn.execute("SELECT metadata FROM task_runs WHERE id = ?", (run_id,)).fetchone()
    merged = decode_json(existing[0]) if existing else None
    merged = merged if isinstance(merged, dict) else {}
    merged.update(metadata or {})
    conn.execute(
        "UPDATE task_runs SET status = ?, outcome = ?, summary = ?, error = ?, metadata = ?, ended_at = ?, "
        "claim_lock = NULL, claim_expires = NULL, worker_pid = NULL WHERE id = ? AND ended_at IS NULL",
        (status or outcome, outcome, summary, error[:ERROR_LIMIT] if error else None, _json_or_null(merged),
         now(), run_id))
    conn.execute("UPDATE tasks SET current_run_id = NULL WHERE id = ?", (task_id,))
    return int(run_id)


def update_run_metadata(conn: sqlite3.Connection, run_id: int, values: dict[str, Any]) -> None:
    row = conn.execute("SELECT metadata FROM task_runs WHERE id = ?", (run_id,)).fetchone()
    metadata = decode_json(row[0]) if row else None
    metadata = metadata if isinstance(metadata, dict) else {}
    metadata.update(values)
    conn.execute("UPDATE task_runs SET metadata = ? WHERE id = ?", (_json_or_null(metadata), run_id))


# Creating and linking

def _would_cycle(conn: sqlite3.Connection, parent_id: str, child_id: str) -> bool:
    """True when `parent_id` is already a descendant of `child_id`."""
    seen: set[str] = set()
    stack = [child_id]
    while stack:
        node = stack.pop()
        if node == parent_id:
            return True
        if node not in seen:
            seen.add(node)
            stack.extend(child_ids(conn, node))
    return False


def create_task(conn: sqlite3.Connection, title: str, *, body: str | None = None, assignee: str | None = None,
                parents: list[str] | tuple[str, ...] = (), priority: int = 0, created_by: str = "user",
                idempotency_key: str | None = None, max_runtime_seconds: int | None = None,
                max_retries: int | None = None, triage: bool = False) -> tuple[str, bool]:
    """Create a task; return its id and whether it is new.

    With an `idempotency_key` that a live (not archived) task already has, that
    task's id is returned and nothing is written. The status is `triage` when asked,
    `todo` while a parent is unfinished, and `ready` otherwise.
    """
    if not title or not title.strip():
        raise TaskError("the task title is empty")
    if idempotency_key:
        row = conn.execute("SELECT id FROM tasks WHERE idempotency_key = ? AND status != 'archived' "
                           "ORDER BY created_at LIMIT 1", (idempotency_key,)).fetchone()
        if row is not None:
            return row[0], False

    parents = list(dict.fromkeys(parents))
    for parent in parents:
        require_task(conn, parent)
    if triage:
        status = "triage"
    elif any(require_task(conn, parent)["status"] not in DONE_STATUSES for parent in parents):
        status = "todo"
    else:
        status = "ready"

    task_id = new_task_id()
    while get_task(conn, task_id) is not None:
        task_id = new_task_id()
    conn.execute(
        "INSERT INTO tasks (id, title, body, assignee, status, priority, created_by, created_at, "
        "idempotency_key, max_runtime_seconds, max_retries) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (task_id, title.strip(), body, assignee, status, priority, created_by, now(), idempotency_key,
         max_runtime_seconds, max_retries))
    for parent in parents:
        conn.execute("INSERT OR IGNORE INTO task_links (parent_id, child_id) VALUES (?, ?)", (parent, task_id))
    append_event(conn, task_id, "created", {
        "assignee": assignee, "status": status, "parents": parents, "tenant": None, "branch_name": None,
        "skills": None, "goal_mode": None,
    })
    return task_id, True


def link_tasks(conn: sqlite3.Connection, parent_id: str, child_id: str) -> None:
    """Make `child_id` depend on `parent_id`; a ready child goes back to todo until the parent is done."""
    if parent_id == child_id:
        raise TaskError("a task cannot depend on itself")
    require_task(conn, parent_id)
    require_task(conn, child_id)
    if _would_cycle(conn, parent_id, child_id):
        raise TaskError(f"linking {parent_id} -> {child_id} would create a cycle")
    conn.execute("INSERT OR IGNORE INTO task_links (parent_id, child_id) VALUES (?, ?)", (parent_id, child_id))
    if require_task(conn, parent_id)["status"] not in DONE_STATUSES:
        conn.execute("UPDATE tasks SET status = 'todo' WHERE id = ? AND status = 'ready'", (child_id,))
    append_event(conn, child_id, "linked", {"parent": parent_id, "child": child_id})


def add_comment(conn: sqlite3.Connection, task_id: str, author: str, body: str) -> int:
    if not body or not body.strip():
        raise TaskError("the comment is empty")
    require_task(conn, task_id)
    cursor = conn.execute("INSERT INTO task_comments (task_id, author, body, created_at) VALUES (?, ?, ?, ?)",
                          (task_id, author.strip(), body.strip(), now()))
    append_event(conn, task_id, "commented", {"author": author, "len": len(body)})
    return int(cursor.lastrowid or 0)


def assign_task(conn: sqlite3.Connection, task_id: str, assignee: str) -> None:
    conn.execute("UPDATE tasks SET assignee = ? WHERE id = ?", (assignee, task_id))
    append_event(conn, task_id, "assigned", {"assignee": assignee})


# Dispatch transitions

def promote_ready(conn: sqlite3.Connection) -> list[str]:
    """Move every `todo` task whose parents are all done or archived to `ready`; return their ids."""
    promoted = []
    for (task_id,) in conn.execute("SELECT id FROM tasks WHERE status = 'todo'").fetchall():
        if not parents_done(conn, task_id):
            continue
        if conn.execute("UPDATE tasks SET status = 'ready' WHERE id = ? AND status = 'todo'",
                        (task_id,)).rowcount == 1:
            append_event(conn, task_id, "promoted")
            promoted.append(task_id)
    return promoted


def claim_task(conn: sqlite3.Connection, task_id: str, lock: str, *, ttl_seconds: int = CLAIM_TTL_SECONDS,
               metadata: dict[str, Any] | None = None) -> int | None:
    """Compare-and-set `ready -> running`; return the new run's id, or None when another claimer won.

    A ready task whose parent is unfinished goes back to `todo` instead (a
    `claim_rejected` event). A losing claim writes nothing.
    """
    if not parents_done(conn, task_id):
        if conn.execute("UPDATE tasks SET status = 'todo' WHERE id = ? AND status = 'ready'",
                        (task_id,)).rowcount == 1:
            append_event(conn, task_id, "claim_rejected", {"reason": "parents_not_done"})
        return None

    started = now()
    expires = started + ttl_seconds
    cursor = conn.execute(
        "UPDATE tasks SET status = 'running', claim_lock = ?, claim_expires = ?, "
        "started_at = COALESCE(started_at, ?) WHERE id = ? AND status = 'ready' AND claim_lock IS NULL",
        (lock, expires, started, task_id))
    if cursor.rowcount != 1:
        return None

    task = require_task(conn, task_id)
    run_cursor = conn.execute(
        "INSERT INTO task_runs (task_id, profile, step_key, status, claim_lock, claim_expires, "
        "max_runtime_seconds, started_at, metadata) VALUES (?, ?, ?, 'running', ?, ?, ?, ?, ?)",
        (task_id, task["assignee"], task["current_step_key"], lock, expires, task["max_runtime_seconds"], started,
         _json_or_null(metadata)))
    run_id = int(run_cursor.lastrowid or 0)
    conn.execute("UPDATE tasks SET current_run_id = ? WHERE id = ?", (run_id, task_id))
    append_event(conn, task_id, "claimed", {"lock": lock, "expires": expires, "run_id": run_id}, run_id=run_id)
    return run_id


def record_spawn(conn: sqlite3.Connection, task_id: str, run_id: int, pid: int, metadata: dict[str, Any]) -> bool:
    """Record a started worker's pid (and hermesd's identity of it) on the task and its run."""
    if conn.execute("UPDATE tasks SET worker_pid = ? WHERE id = ? AND status = 'running' AND current_run_id = ?",
                    (pid, task_id, run_id)).rowcount != 1:
        return False
    conn.execute("UPDATE task_runs SET worker_pid = ? WHERE id = ?", (pid, run_id))
    update_run_metadata(conn, run_id, metadata)
    append_event(conn, task_id, "spawned", {"pid": pid}, run_id=run_id)
    return True


def extend_claim(conn: sqlite3.Connection, task_id: str, run_id: int, reason: str,
                 ttl_seconds: int = CLAIM_TTL_SECONDS) -> None:
    """Extend the expired claim of a worker that is still alive (a `claim_extended` event, as in Hermes)."""
    task = require_task(conn, task_id)
    expires = now() + ttl_seconds
    if conn.execute("UPDATE tasks SET claim_expires = ? WHERE id = ? AND status = 'running' AND current_run_id = ?",
                    (expires, task_id, run_id)).rowcount != 1:
        return
    conn.execute("UPDATE task_runs SET claim_expires = ? WHERE id = ?", (expires, run_id))
    append_event(conn, task_id, "claim_extended", {
        "reason": reason, "worker_pid": task["worker_pid"], "claim_lock": task["claim_lock"],
        "claim_expires_was": task["claim_expires"], "claim_expires_now": expires,
    }, run_id=run_id)


def release_claim(conn: sqlite3.Connection, task_id: str, run_id: int | None, *, outcome: str, event_kind: str,
                  payload: dict[str, Any], error: str | None = None) -> bool:
    """Put a running task back to `ready`, closing its run with `outcome` and writing `event_kind`."""
    if conn.execute(
            "UPDATE tasks SET status = 'ready', claim_lock = NULL, claim_expires = NULL, worker_pid = NULL "
            "WHERE id = ? AND status = 'running' AND current_run_id IS ?", (task_id, run_id)).rowcount != 1:
        return False
    closed = end_run(conn, task_id, outcome=outcome, error=error, metadata=payload)
    append_event(conn, task_id, event_kind, payload, run_id=closed)
    return True


def record_failure(conn: sqlite3.Connection, task_id: str, *, error: str, trigger_outcome: str,
                   failure_limit: int) -> bool:
    """Count one failure of a task that is back in `ready`; block it with `gave_up` at the limit.

    The limit is the task's `max_retries` when set, else `failure_limit`. Return True
    when the task was blocked.
    """
    task = require_task(conn, task_id)
    failures = int(task["consecutive_failures"] or 0) + 1
    if task["max_retries"] is not None:
        limit, source = int(task["max_retries"]), "task"
    else:
        limit, source = failure_limit, "dispatcher"
    error = error[:ERROR_LIMIT]

    if failures < limit:
        conn.execute("UPDATE tasks SET consecutive_failures = ?, last_failure_error = ? WHERE id = ?",
                     (failures, error, task_id))
        return False

    conn.execute(
        "UPDATE tasks SET status = 'blocked', claim_lock = NULL, claim_expires = NULL, worker_pid = NULL, "
        "consecutive_failures = ?, last_failure_error = ? WHERE id = ? AND status IN ('ready', 'running')",
        (failures, error, task_id))
    append_event(conn, task_id, "gave_up", {
        "failures": failures, "effective_limit": limit, "limit_source": source, "error": error,
        "trigger_outcome": trigger_outcome,
    })
    return True


# Outcomes that workers and users report

def _expect_run(sql: str, parameters: tuple[Any, ...], expected_run_id: int | None) -> tuple[str, tuple[Any, ...]]:
    if expected_run_id is None:
        return sql, parameters
    return sql + " AND current_run_id = ?", (*parameters, expected_run_id)


def complete_task(conn: sqlite3.Connection, task_id: str, *, result: str | None = None, summary: str | None = None,
                  expected_run_id: int | None = None) -> bool:
    """Move a running, ready, blocked or review task to `done`; return False when it is in no such state.

    With `expected_run_id`, only that run may complete the task (a worker whose run
    was reclaimed cannot complete its successor's). Children whose parents are now
    all done become ready in the same transaction.
    """
    require_task(conn, task_id)
    sql, parameters = _expect_run(
        "UPDATE tasks SET status = 'done', result = ?, completed_at = ?, claim_lock = NULL, claim_expires = NULL, "
        "worker_pid = NULL, block_kind = NULL, block_recurrences = 0, consecutive_failures = 0, "
        "last_failure_error = NULL WHERE id = ? AND status IN ('running', 'ready', 'blocked', 'review')",
        (result, now(), task_id), expected_run_id)
    if conn.execute(sql, parameters).rowcount != 1:
        return False
    handoff = summary if summary is not None else result
    run_id = end_run(conn, task_id, outcome="completed", status="done", summary=handoff)
    append_event(conn, task_id, "completed", {"result_len": len(result) if result else 0,
                                              "summary": first_line(handoff)}, run_id=run_id)
    promote_ready(conn)
    return True


def block_task(conn: sqlite3.Connection, task_id: str, reason: str | None, *, kind: str | None = None,
               expected_run_id: int | None = None) -> bool:
    """Move a running or ready task to `blocked`; it stays there until unblocked."""
    task = require_task(conn, task_id)
    recurrences = int(task["block_recurrences"] or 0) + 1 if task["block_kind"] == kind else 1
    sql, parameters = _expect_run(
        "UPDATE tasks SET status = 'blocked', claim_lock = NULL, claim_expires = NULL, worker_pid = NULL, "
        "block_kind = ?, block_recurrences = ? WHERE id = ? AND status IN ('running', 'ready')",
        (kind, recurrences, task_id), expected_run_id)
    if conn.execute(sql, parameters).rowcount != 1:
        return False
    run_id = end_run(conn, task_id, outcome="blocked", status="blocked", summary=reason)
    append_event(conn, task_id, "blocked", {"reason": reason, "kind": kind, "recurrences": recurrences},
                 run_id=run_id)
    return True


def unblock_task(conn: sqlite3.Connection, task_id: str) -> bool:
    """Move a blocked or scheduled task back to `ready` (or `todo` while a parent is unfinished).

    This resets the failure count, so a task that gave up gets a fresh retry budget.
    """
    if require_task(conn, task_id)["status"] not in ("blocked", "scheduled"):
        return False
    status = "ready" if parents_done(conn, task_id) else "todo"
    end_run(conn, task_id, outcome="reclaimed", summary="invariant recovery on unblock")
    if conn.execute("UPDATE tasks SET status = ?, current_run_id = NULL, consecutive_failures = 0, "
                    "last_failure_error = NULL WHERE id = ? AND status IN ('blocked', 'scheduled')",
                    (status, task_id)).rowcount != 1:
        return False
    append_event(conn, task_id, "unblocked", None if status == "ready" else {"status": status})
    return True


def archive_task(conn: sqlite3.Connection, task_id: str) -> dict[str, Any] | None:
    """Archive a task; return what it was before (its worker pid, if it was running), or None when it already was.

    The caller stops a running task's worker, because no dispatcher tracks it any more.
    """
    task = require_task(conn, task_id)
    if conn.execute("UPDATE tasks SET status = 'archived', claim_lock = NULL, claim_expires = NULL, "
                    "worker_pid = NULL WHERE id = ? AND status != 'archived'", (task_id,)).rowcount != 1:
        return None
    run_id = end_run(conn, task_id, outcome="reclaimed", summary="task archived with run still active")
    append_event(conn, task_id, "archived", None, run_id=run_id)
    promote_ready(conn)
    return task


def heartbeat(conn: sqlite3.Connection, task_id: str, note: str | None = None,
              ttl_seconds: int = CLAIM_TTL_SECONDS) -> bool:
    """Record that a running task's worker is alive and extend its claim; False when it is not running."""
    current = now()
    if conn.execute("UPDATE tasks SET last_heartbeat_at = ?, claim_expires = ? WHERE id = ? AND status = 'running'",
                    (current, current + ttl_seconds, task_id)).rowcount != 1:
        return False
    run_id = require_task(conn, task_id)["current_run_id"]
    if run_id is not None:
        conn.execute("UPDATE task_runs SET last_heartbeat_at = ?, claim_expires = ? WHERE id = ?",
                     (current, current + ttl_seconds, run_id))
    append_event(conn, task_id, "heartbeat", {"note": note} if note else None, run_id=run_id)
    return True
