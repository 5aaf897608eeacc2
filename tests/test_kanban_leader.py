"""Kanban dispatch through `hermesd up` on a copy of the real Hermes 0.19 home, and the `hermesd kanban` CLI."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.helpers import Hermesd, wait_for

WORKER = Path(__file__).parent / "kanban_worker.py"

RESEARCHER_TASK = "t_4f9ea14a"
WRITER_TASK = "t_bba04c75"
BLOCKED_TASK = "t_7ee9bed7"
CODER_TASK = "t_a44901bc"
TRIAGE_TASK = "t_3276fec0"
NEWSLETTER_TASK = "t_aec7938c"


def configure_worker(home: Path, profile: str, mode: str, dispatch: str = "false") -> None:
    directory = home if profile == "default" else home / "profiles" / profile
    command = [sys.executable, str(WORKER), str(home.parent / "out"), mode, "{task_id}"]
    extra = "  dispatch_interval_seconds: 60\n" if profile == "default" else ""
    (directory / "config.yaml").write_text(
        f"kanban:\n  dispatch_in_gateway: {dispatch}\n  worker_command: {json.dumps(command)}\n{extra}")


def query(database: Path, sql: str, parameters: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    connection = sqlite3.connect(database, timeout=5)
    try:
        return connection.execute(sql, parameters).fetchall()
    finally:
        connection.close()


def status_of(database: Path, task_id: str) -> str | None:
    rows = query(database, "SELECT status FROM tasks WHERE id = ?", (task_id,))
    return rows[0][0] if rows else None


def event_kinds(database: Path, task_id: str) -> list[str]:
    return [row[0] for row in query(database, "SELECT kind FROM task_events WHERE task_id = ? ORDER BY id",
                                    (task_id,))]


def runs_of(database: Path, task_id: str) -> list[tuple[Any, ...]]:
    return query(database, "SELECT id, outcome, started_at, ended_at, worker_pid FROM task_runs WHERE task_id = ? "
                           "ORDER BY id", (task_id,))


def starts_of(home: Path, task_id: str) -> list[dict[str, Any]]:
    path = home.parent / "out" / f"{task_id}.starts"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def process_gone(pid: int) -> bool:
    """True when `pid` has exited (a zombie waiting to be reaped counts as exited)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.fixture
def out_dir(home: Path) -> Path:
    path = home.parent / "out"
    path.mkdir()
    return path


@pytest.mark.slow
def test_up_runs_fixture_chain(home: Path, hermesd: Hermesd, out_dir: Path) -> None:
    for profile in ("researcher", "coder", "admin"):
        configure_worker(home, profile, "ok")
    configure_worker(home, "writer", "complete-self")
    database = home / "kanban.db"
    newsletter = home / "kanban" / "boards" / "newsletter" / "kanban.db"
    blocked_events = event_kinds(database, BLOCKED_TASK)

    hermesd.up_detached()
    wait_for(lambda: status_of(database, WRITER_TASK) == "done", timeout=30, message="the writer task to be done")
    wait_for(lambda: status_of(database, CODER_TASK) == "done", timeout=10, message="the coder task to be done")
    wait_for(lambda: status_of(newsletter, NEWSLETTER_TASK) == "done", timeout=10,
             message="the newsletter task to be done")

    researcher_done = query(database, "SELECT completed_at FROM tasks WHERE id = ?", (RESEARCHER_TASK,))[0][0]
    assert runs_of(database, WRITER_TASK)[0][2] >= researcher_done
    for database_path, task_id in ((database, RESEARCHER_TASK), (database, WRITER_TASK), (database, CODER_TASK),
                                   (newsletter, NEWSLETTER_TASK)):
        runs = runs_of(database_path, task_id)
        assert len(runs) == 1, f"{task_id} should have exactly one run"
        assert runs[0][1] == "completed"
        kinds = event_kinds(database_path, task_id)
        for kind in ("claimed", "spawned", "completed"):
            assert kinds.count(kind) == 1, f"{task_id}: expected one {kind} event in {kinds}"
        assert len(starts_of(home, task_id)) == 1
    assert query(database, "SELECT result FROM tasks WHERE id = ?", (WRITER_TASK,))[0][0] == "self"

    assert status_of(database, BLOCKED_TASK) == "blocked"
    assert event_kinds(database, BLOCKED_TASK) == blocked_events
    assert status_of(database, TRIAGE_TASK) == "triage"
    assert runs_of(database, TRIAGE_TASK) == []
    assert starts_of(home, BLOCKED_TASK) == []

    environment = starts_of(home, RESEARCHER_TASK)[0]["env"]
    assert environment["HERMES_HOME"] == str(home / "profiles" / "researcher")
    assert environment["HERMES_KANBAN_DB"] == str(database)


@pytest.mark.slow
def test_new_task_starts_quickly(home: Path, hermesd: Hermesd, out_dir: Path) -> None:
    for profile in ("researcher", "coder", "admin", "writer"):
        configure_worker(home, profile, "ok")
    database = home / "kanban.db"
    hermesd.up_detached()
    wait_for(lambda: status_of(database, WRITER_TASK) == "done", timeout=30, message="the fixture chain to finish")

    created = hermesd.run("kanban", "create", "fresh task", "--assignee", "coder")
    assert created.returncode == 0, created.stderr
    task_id = created.stdout.strip()
    # The tick is 60 s in this home, so a start within a few seconds shows the leader woke on the change.
    wait_for(lambda: starts_of(home, task_id), timeout=5, message="the new task's worker to start")


@pytest.mark.slow
def test_new_leader_adopts_running_worker(home: Path, hermesd: Hermesd, out_dir: Path) -> None:
    configure_worker(home, "default", "ok", dispatch="true")
    configure_worker(home, "coder", "slow-ok", dispatch="true")
    for profile in ("researcher", "admin", "writer"):
        configure_worker(home, profile, "ok")
    database = home / "kanban.db"
    hermesd.up_detached()
    wait_for(lambda: status_of(database, WRITER_TASK) == "done", timeout=30, message="the fixture chain to finish")

    created = hermesd.run("kanban", "create", "long task", "--assignee", "coder")
    task_id = created.stdout.strip()
    wait_for(lambda: starts_of(home, task_id), timeout=10, message="the long worker to start")
    leader = hermesd.profile("default")
    assert leader["role"] == "leader"
    os.kill(leader["pid"], signal.SIGKILL)

    wait_for(lambda: status_of(database, task_id) == "done", timeout=30, message="the adopted task to complete")
    assert len(starts_of(home, task_id)) == 1
    runs = runs_of(database, task_id)
    assert len(runs) == 1
    assert runs[0][1] == "completed"
    kinds = event_kinds(database, task_id)
    assert kinds.count("claimed") == 1
    assert kinds.count("spawned") == 1
    epochs = query(database, "SELECT epoch FROM hermesd_owner")
    assert epochs[0][0] >= 2, "a second leader should have taken over"


@pytest.mark.slow
def test_shutdowns_do_not_count_failures(home: Path, hermesd: Hermesd, out_dir: Path) -> None:
    for profile in ("researcher", "admin", "writer"):
        configure_worker(home, profile, "ok")
    configure_worker(home, "coder", "sleep")
    database = home / "kanban.db"
    task_id = hermesd.run("kanban", "create", "long task", "--assignee", "coder").stdout.strip()
    hermesd.up_detached()

    for shutdown in range(2):
        wait_for(lambda: len(starts_of(home, task_id)) == shutdown + 1, timeout=30,
                 message=f"start {shutdown + 1} of the long worker")
        assert hermesd.run("down").returncode == 0
        assert process_gone(starts_of(home, task_id)[-1]["pid"]), "hermesd down left the worker running"
        hermesd.up_detached()

    wait_for(lambda: len(starts_of(home, task_id)) == 3, timeout=30, message="the third start of the long worker")
    kinds = event_kinds(database, task_id)
    assert "crashed" not in kinds
    assert "gave_up" not in kinds
    assert kinds.count("reclaimed") == 2
    assert status_of(database, task_id) == "running"
    assert query(database, "SELECT consecutive_failures FROM tasks WHERE id = ?", (task_id,))[0][0] == 0


# The CLI

def test_created_board_has_hermes_schema(home: Path, hermesd: Hermesd) -> None:
    result = hermesd.run("kanban", "boards", "create", "ops", "--name", "Ops")
    assert result.returncode == 0, result.stderr

    def columns(database: Path) -> set[tuple[str, str]]:
        tables = [row[0] for row in query(database, "SELECT name FROM sqlite_master WHERE type = 'table' "
                                                    "AND name NOT LIKE 'sqlite_%'")]
        return {(table, row[1]) for table in tables for row in query(database, f"PRAGMA table_info({table})")}

    fixture = columns(Path(__file__).parent / "fixtures" / "hermes-0.19-home" / "kanban.db")
    created = columns(home / "kanban" / "boards" / "ops" / "kanban.db")
    assert fixture, "the fixture should have tables"
    assert fixture <= created, f"missing: {sorted(fixture - created)}"
    board_json = json.loads((home / "kanban" / "boards" / "ops" / "board.json").read_text())
    assert board_json["name"] == "Ops"


def test_cli_task_lifecycle(home: Path, hermesd: Hermesd) -> None:
    parent = hermesd.run("kanban", "create", "parent", "--assignee", "researcher", "--priority", "3").stdout.strip()
    child = hermesd.run("kanban", "create", "child", "--assignee", "writer", "--parent", parent,
                        "--idempotency-key", "k1").stdout.strip()
    again = hermesd.run("kanban", "create", "child again", "--idempotency-key", "k1").stdout
    assert again.startswith(child)

    listed = json.loads(hermesd.run("kanban", "list", "--json").stdout)
    statuses = {task["id"]: task["status"] for task in listed}
    assert statuses[parent] == "ready"
    assert statuses[child] == "todo"

    assert hermesd.run("kanban", "comment", child, "looks good").returncode == 0
    assert hermesd.run("kanban", "block", parent, "needs", "input").returncode == 0
    assert hermesd.run("kanban", "block", parent, "again").returncode == 1
    assert hermesd.run("kanban", "unblock", parent).returncode == 0
    assert hermesd.run("kanban", "complete", parent, "--result", "sources").returncode == 0

    shown = json.loads(hermesd.run("kanban", "show", child, "--json").stdout)
    assert shown["task"]["status"] == "ready"
    assert shown["parents"] == [parent]
    assert [event["kind"] for event in shown["events"]] == ["created", "commented", "promoted"]
    parent_kinds = event_kinds(home / "kanban.db", parent)
    assert parent_kinds == ["created", "blocked", "unblocked", "completed"]

    assert hermesd.run("kanban", "archive", child).returncode == 0
    stats = json.loads(hermesd.run("kanban", "stats", "--json").stdout)
    assert "archived" not in stats["by_status"]
    assert hermesd.run("kanban", "show", "t_00000000").returncode == 2


def test_cli_uses_kanban_db_variable(home: Path, hermesd: Hermesd) -> None:
    profile_home = home / "profiles" / "researcher"
    decoy = profile_home / "kanban.db"
    decoy.write_bytes((home / "kanban" / "boards" / "newsletter" / "kanban.db").read_bytes())
    environment = {"HERMES_HOME": str(profile_home), "HERMES_KANBAN_DB": str(home / "kanban.db"),
                   "HERMES_KANBAN_TASK": "t_a44901bc", "HERMES_KANBAN_BOARD": "default"}
    result = hermesd.run("kanban", "block", "cannot", "reproduce", env=environment)
    assert result.returncode == 0, result.stderr
    assert status_of(home / "kanban.db", "t_a44901bc") == "blocked"
    assert query(decoy, "SELECT count(*) FROM task_events WHERE kind = 'blocked'")[0][0] == 0


def test_watch_prints_new_events(home: Path, hermesd: Hermesd) -> None:
    watcher = subprocess.Popen([sys.executable, "-m", "supervisor", "kanban", "watch", "--json", "--timeout", "6"],
                               env=hermesd.environ, stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(1.5)
        task_id = hermesd.run("kanban", "create", "watched").stdout.strip()
        output, _ = watcher.communicate(timeout=20)
    finally:
        watcher.kill()
    events = [json.loads(line) for line in output.splitlines()]
    assert any(event["task_id"] == task_id and event["kind"] == "created" for event in events)


def test_create_warns_about_missing_assignee(hermesd, home) -> None:
    result = hermesd.run("kanban", "create", "orphan task", "--assignee", "nosuchprofile")

    assert result.returncode == 0, result.stderr
    assert "no profile 'nosuchprofile' exists yet" in result.stderr
    assert result.stdout.strip().startswith("t_")


def test_list_and_watch_reject_unknown_values(hermesd, home) -> None:
    listed = hermesd.run("kanban", "list", "--status", "bogus")
    watched = hermesd.run("kanban", "watch", "--task", "t_00000000", "--timeout", "1")

    assert listed.returncode == 2
    assert "invalid status 'bogus' for --status" in listed.stderr
    assert watched.returncode == 2
    assert "task t_00000000 not found on board default" in watched.stderr
