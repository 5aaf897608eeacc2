"""Writing the rows that Hermes Agent writes when a task ends, and reading subscriptions back."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

WRITER_TASK = "t_bba04c75"  # subscribed: telegram chat 1001 through profile writer
CODER_TASK = "t_a44901bc"  # subscribed: discord chat 2002 through profile coder
RESEARCHER_TASK = "t_4f9ea14a"


def _connect(database: Path) -> sqlite3.Connection:
    connection = sqlite3.connect(str(database), timeout=10, isolation_level=None)
    connection.execute("PRAGMA busy_timeout = 10000")
    return connection


def end_task(database: Path, task_id: str, kind: str = "completed", payload: dict[str, Any] | None = None,
             status: str = "done", result: str | None = None) -> int:
    """Move a task to `status` and append its event, as `hermes kanban complete|block|archive` does; return the event id."""
    connection = _connect(database)
    try:
        connection.execute("BEGIN IMMEDIATE")
        connection.execute("UPDATE tasks SET status = ?, result = COALESCE(?, result), completed_at = ? WHERE id = ?",
                           (status, result, int(time.time()), task_id))
        cursor = connection.execute(
            "INSERT INTO task_events (task_id, run_id, kind, payload, created_at) VALUES (?, NULL, ?, ?, ?)",
            (task_id, kind, json.dumps(payload) if payload is not None else None, int(time.time())))
        connection.execute("COMMIT")
        return int(cursor.lastrowid)
    finally:
        connection.close()


def park_tasks(database: Path, *task_ids: str) -> None:
    """Move tasks to `triage`, where the dispatcher leaves them alone, so a test writes their events itself."""
    connection = _connect(database)
    try:
        for task_id in task_ids:
            connection.execute("UPDATE tasks SET status = 'triage' WHERE id = ?", (task_id,))
    finally:
        connection.close()


def subscribe(database: Path, task_id: str, platform: str, chat_id: str, profile: str | None,
              created_at: int | None = None) -> None:
    """Insert a subscription the way Hermes Agent 0.19 does (`last_event_id` left at 0)."""
    connection = _connect(database)
    try:
        connection.execute(
            "INSERT INTO kanban_notify_subs (task_id, platform, chat_id, thread_id, notifier_profile, created_at) "
            "VALUES (?, ?, ?, '', ?, ?)",
            (task_id, platform, chat_id, profile, created_at if created_at is not None else int(time.time())))
    finally:
        connection.close()


def subscriptions(database: Path) -> dict[tuple[str, str], int]:
    """Map (task id, platform) to the subscription's cursor."""
    connection = _connect(database)
    try:
        rows = connection.execute("SELECT task_id, platform, last_event_id FROM kanban_notify_subs").fetchall()
    finally:
        connection.close()
    return {(task_id, platform): cursor for task_id, platform, cursor in rows}


def events(database: Path, task_id: str, kind: str) -> list[dict[str, Any]]:
    connection = _connect(database)
    try:
        rows = connection.execute("SELECT id, payload FROM task_events WHERE task_id = ? AND kind = ? ORDER BY id",
                                  (task_id, kind)).fetchall()
    finally:
        connection.close()
    return [{"id": event_id, "payload": json.loads(payload) if payload else None} for event_id, payload in rows]
