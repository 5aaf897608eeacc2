"""`hermesd kanban ...`: the board commands that users and workers run.

These commands open the board database themselves, for as long as the command
runs, and write in `BEGIN IMMEDIATE` transactions without the leader's epoch check,
like `hermes kanban` does. The running leader notices their writes and reacts.

The board is `--board SLUG` when given. Otherwise a worker's `HERMES_KANBAN_DB` (the
database path the dispatcher gave it) wins, so a worker whose `HERMES_HOME` is a
profile directory still finds its task; then `HERMES_KANBAN_BOARD`, then the slug in
`<root>/kanban/current` (written by `hermes kanban boards switch`), then `default`.

Exit codes: 0 success; 1 the task is not in a state that allows the change; 2 invalid
input (unknown task or board, invalid name); 4 the home does not exist.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from kanban import tasks
from kanban.home import DEFAULT_BOARD, Home, is_valid_name
from kanban.store import TASK_STATUSES, Board, BoardError, create_board
from kanban.workers import signal_worker

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_HOME = 4

TASK_ID_PATTERN = re.compile(r"t_[0-9a-f]{8,}")

# How often `watch` looks for new events.
WATCH_POLL_SECONDS = 0.25

kanban_app = typer.Typer(
    help="Work with the kanban boards of the home. Without --board, a command uses the board in "
         "HERMES_KANBAN_DB (set for workers), then HERMES_KANBAN_BOARD, then the one `hermes kanban boards "
         "switch` chose, then `default`.",
    no_args_is_help=True)
boards_app = typer.Typer(help="List and create boards.", no_args_is_help=True)
kanban_app.add_typer(boards_app, name="boards")

BoardOption = Annotated[Optional[str], typer.Option("--board", help="Board slug (default: see `hermesd kanban --help`).")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def register(app: typer.Typer) -> None:
    app.add_typer(kanban_app, name="kanban")


def fail(message: str, code: int) -> typer.Exit:
    typer.echo(f"hermesd: error: {message}", err=True)
    return typer.Exit(code)


def print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, default=str))


# Finding the board

def _home(context: typer.Context) -> Home:
    return context.obj.home


def _existing_home(context: typer.Context) -> Home:
    home = _home(context)
    if not home.exists():
        raise fail(f"Hermes home not found: {home.root}", EXIT_HOME)
    return home


def _current_slug(home: Home) -> str:
    environment_slug = os.environ.get("HERMES_KANBAN_BOARD", "").strip()
    if environment_slug:
        return environment_slug
    try:
        slug = (home.kanban_root / "kanban" / "current").read_text(encoding="utf-8").strip()
    except OSError:
        return DEFAULT_BOARD
    return slug if is_valid_name(slug) else DEFAULT_BOARD


def resolve_board(home: Home, slug: str | None) -> tuple[str, Path]:
    """Return the slug and database path of the board a command works on."""
    if slug is not None:
        if not is_valid_name(slug):
            raise fail(f"invalid board slug {slug!r}: use a-z, 0-9, '_' and '-'", EXIT_USAGE)
        return slug, home.board_path(slug)
    database = os.environ.get("HERMES_KANBAN_DB", "").strip()
    if database:
        return os.environ.get("HERMES_KANBAN_BOARD", "").strip() or DEFAULT_BOARD, Path(database)
    slug = _current_slug(home)
    return slug, home.board_path(slug)


@contextmanager
def open_board(context: typer.Context, slug: str | None, create: bool = False) -> Iterator[Board]:
    home = _home(context)
    slug, path = resolve_board(home, slug)
    if not path.is_file():
        if create and slug == DEFAULT_BOARD and home.exists():
            create_board(path)
        elif not home.exists() and "HERMES_KANBAN_DB" not in os.environ:
            raise fail(f"Hermes home not found: {home.root}", EXIT_HOME)
        else:
            raise fail(f"board {slug!r} not found: {path} does not exist. List the boards with "
                       "`hermesd kanban boards list`", EXIT_USAGE)
    try:
        board = Board(slug, path)
    except BoardError as error:
        raise fail(str(error), EXIT_FAILED) from None
    try:
        yield board
    finally:
        board.close()


@contextmanager
def writing(board: Board) -> Iterator[Any]:
    """Run a write transaction and turn a TaskError into a usage error."""
    try:
        with board.transaction() as conn:
            yield conn
    except tasks.TaskError as error:
        raise fail(str(error), EXIT_USAGE) from None


def _actor() -> str:
    return os.environ.get("HERMES_PROFILE", "").strip() or "user"


def _own_task(task_id: str | None) -> tuple[str, int | None]:
    """The task a command acts on, and the run it must still be in when that is the worker's own task."""
    own = os.environ.get("HERMES_KANBAN_TASK", "").strip()
    task_id = task_id or own
    if not task_id:
        raise fail("no task given: pass a task id (HERMES_KANBAN_TASK is not set)", EXIT_USAGE)
    run_text = os.environ.get("HERMES_KANBAN_RUN_ID", "").strip()
    if task_id == own and run_text.isdigit():
        return task_id, int(run_text)
    return task_id, None


def _format_time(timestamp: int | None) -> str:
    if timestamp is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


# Boards

def _board_info(home: Home, slug: str) -> dict[str, Any]:
    path = home.board_path(slug)
    info: dict[str, Any] = {"slug": slug, "path": str(path), "name": slug}
    metadata_path = path.parent / "board.json"
    if slug != DEFAULT_BOARD and metadata_path.is_file():
        try:
            metadata = json.loads(metadata_path.read_text(encoding="utf-8"))
            info["name"] = metadata.get("name") or slug
            info["description"] = metadata.get("description") or ""
        except (OSError, ValueError):
            pass
    try:
        board = Board(slug, path)
    except BoardError as error:
        info["error"] = str(error)
        return info
    try:
        info["counts"] = board.task_counts()
    finally:
        board.close()
    return info


@boards_app.command("list")
def boards_list(context: typer.Context, as_json: JsonOption = False) -> None:
    """List the live boards with their task counts."""
    home = _existing_home(context)
    boards = [_board_info(home, slug) for slug in home.board_slugs()]
    if as_json:
        print_json(boards)
        return
    for info in boards:
        counts = ", ".join(f"{status}={count}" for status, count in sorted((info.get("counts") or {}).items()))
        detail = info.get("error") or counts or "no tasks"
        typer.echo(f"{info['slug']:<20} {info['name']:<24} {detail}")


@boards_app.command("create")
def boards_create(
    context: typer.Context,
    slug: Annotated[str, typer.Argument(help="Board slug: a-z, 0-9, '_' and '-'.")],
    name: Annotated[Optional[str], typer.Option(help="Display name (default: the slug).")] = None,
    description: Annotated[str, typer.Option(help="One-line description.")] = "",
) -> None:
    """Create a board with Hermes Agent's schema, so `hermes kanban` can open it too."""
    home = _existing_home(context)
    if not is_valid_name(slug) or slug in (DEFAULT_BOARD, "_archived"):
        raise fail(f"invalid board slug {slug!r}: use a-z, 0-9, '_' and '-', and not 'default'", EXIT_USAGE)
    path = home.board_path(slug)
    if path.exists():
        raise fail(f"board {slug!r} already exists at {path}", EXIT_FAILED)
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"slug": slug, "name": name or slug, "description": description, "icon": "", "color": "",
                "default_workdir": None, "created_at": tasks.now(), "archived": False}
    (path.parent / "board.json").write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")
    create_board(path)
    typer.echo(f"created board {slug} at {path}")


# Tasks

@kanban_app.command("create")
def create(
    context: typer.Context,
    title: Annotated[str, typer.Argument(help="Task title.")],
    assignee: Annotated[Optional[str], typer.Option(help="Profile that works on the task.")] = None,
    parent: Annotated[Optional[list[str]], typer.Option(
        "--parent", help="Task that must be done first (repeatable).")] = None,
    body: Annotated[Optional[str], typer.Option(help="Task description.")] = None,
    priority: Annotated[int, typer.Option(help="Higher runs first.")] = 0,
    idempotency_key: Annotated[Optional[str], typer.Option(
        help="Return the existing live task with this key instead of creating another.")] = None,
    max_runtime: Annotated[Optional[int], typer.Option(
        min=1, help="Stop the worker after this many seconds (counts as a failure).")] = None,
    max_retries: Annotated[Optional[int], typer.Option(
        min=1, help="Failures before the task blocks; overrides kanban.failure_limit.")] = None,
    triage: Annotated[bool, typer.Option("--triage", help="Create it in triage; the dispatcher leaves it alone.")
                      ] = False,
    board: BoardOption = None,
    as_json: JsonOption = False,
) -> None:
    """Create a task: ready, or todo while a parent is unfinished, or triage with --triage."""
    if assignee is not None and not is_valid_name(assignee):
        raise fail(f"invalid profile name {assignee!r} for --assignee", EXIT_USAGE)
    if assignee is not None and assignee not in _home(context).profile_names():
        # The task is still created, so work can be queued before its profile exists.
        typer.echo(f"hermesd: warning: no profile {assignee!r} exists yet, so this task cannot run until it is "
                   f"created (`hermes profile create {assignee}`)", err=True)
    with open_board(context, board, create=True) as opened, writing(opened) as conn:
        task_id, created = tasks.create_task(
            conn, title, body=body, assignee=assignee, parents=parent or [], priority=priority,
            created_by=_actor(), idempotency_key=idempotency_key, max_runtime_seconds=max_runtime,
            max_retries=max_retries, triage=triage)
        task = tasks.require_task(conn, task_id)
    if as_json:
        print_json({**task, "created": created})
    else:
        typer.echo(task_id if created else f"{task_id} (existing task with this idempotency key)")


@kanban_app.command("list")
def list_command(
    context: typer.Context,
    status: Annotated[Optional[str], typer.Option(help="Only tasks with this status.")] = None,
    assignee: Annotated[Optional[str], typer.Option(help="Only tasks of this profile.")] = None,
    archived: Annotated[bool, typer.Option("--archived", help="Include archived tasks.")] = False,
    board: BoardOption = None,
    as_json: JsonOption = False,
) -> None:
    """List tasks, highest priority and oldest first."""
    if status is not None and status not in TASK_STATUSES:
        raise fail(f"invalid status {status!r} for --status; use one of: {', '.join(TASK_STATUSES)}", EXIT_USAGE)
    with open_board(context, board) as opened:
        rows = tasks.list_tasks(opened.connection, status=status, assignee=assignee, include_archived=archived)
    if as_json:
        print_json(rows)
        return
    for task in rows:
        typer.echo(f"{task['id']}  {task['status']:<9} {task['priority'] or 0:>3}  "
                   f"{task['assignee'] or '-':<12} {task['title']}")


@kanban_app.command("show")
def show(
    context: typer.Context,
    task_id: Annotated[str, typer.Argument(help="Task id.")],
    board: BoardOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show a task with its links, comments, runs and events."""
    with open_board(context, board) as opened:
        conn = opened.connection
        task = tasks.get_task(conn, task_id)
        if task is None:
            raise fail(f"task {task_id} not found on board {opened.slug}", EXIT_USAGE)
        details = {
            "task": task, "parents": tasks.parent_ids(conn, task_id), "children": tasks.child_ids(conn, task_id),
            "comments": tasks.list_comments(conn, task_id), "runs": tasks.list_runs(conn, task_id),
            "events": tasks.list_events(conn, task_id),
        }
    if as_json:
        print_json(details)
        return
    typer.echo(f"{task['id']}: {task['title']}")
    typer.echo(f"  status {task['status']}, assignee {task['assignee'] or '-'}, priority {task['priority'] or 0}")
    for key in ("body", "result", "last_failure_error"):
        if task.get(key):
            typer.echo(f"  {key}: {task[key]}")
    typer.echo(f"  parents: {', '.join(details['parents']) or '-'}; children: {', '.join(details['children']) or '-'}")
    for run in details["runs"]:
        typer.echo(f"  run {run['id']}: {run['profile'] or '-'} {run['outcome'] or run['status']} "
                   f"from {_format_time(run['started_at'])} to {_format_time(run['ended_at'])}"
                   + (f" ({run['error']})" if run["error"] else ""))
    for comment in details["comments"]:
        typer.echo(f"  comment by {comment['author']} at {_format_time(comment['created_at'])}: {comment['body']}")
    for event in details["events"]:
        typer.echo(f"  {_format_time(event['created_at'])} {event['kind']} {json.dumps(event['payload'])}")


@kanban_app.command("link")
def link(
    context: typer.Context,
    parent_id: Annotated[str, typer.Argument(help="Task that must be done first.")],
    child_id: Annotated[str, typer.Argument(help="Task that waits for it.")],
    board: BoardOption = None,
) -> None:
    """Make CHILD wait until PARENT is done."""
    with open_board(context, board) as opened, writing(opened) as conn:
        tasks.link_tasks(conn, parent_id, child_id)
    typer.echo(f"{child_id} now depends on {parent_id}")


def _apply(context: typer.Context, board: str | None, task_id: str, verb: str, operation: Any) -> None:
    """Run `operation(conn)` in a transaction; exit 1 when it reports that the task's state does not allow it."""
    with open_board(context, board) as opened, writing(opened) as conn:
        task = tasks.require_task(conn, task_id)
        if not operation(conn):
            raise fail(f"cannot {verb} task {task_id}: it is {task['status']}", EXIT_FAILED)
    typer.echo(f"{verb}: {task_id}")


@kanban_app.command("complete")
def complete(
    context: typer.Context,
    task_id: Annotated[Optional[str], typer.Argument(help="Task id (default: HERMES_KANBAN_TASK).")] = None,
    result: Annotated[Optional[str], typer.Option(help="What the task produced.")] = None,
    summary: Annotated[Optional[str], typer.Option(help="Hand-off for the next task (default: the result).")] = None,
    board: BoardOption = None,
) -> None:
    """Mark a task done."""
    task_id, run_id = _own_task(task_id)
    _apply(context, board, task_id, "complete",
           lambda conn: tasks.complete_task(conn, task_id, result=result, summary=summary, expected_run_id=run_id))


@kanban_app.command("block")
def block(
    context: typer.Context,
    words: Annotated[list[str], typer.Argument(help="[TASK_ID] REASON (the task defaults to HERMES_KANBAN_TASK).")],
    board: BoardOption = None,
) -> None:
    """Block a running or ready task until someone unblocks it."""
    explicit = words[0] if TASK_ID_PATTERN.fullmatch(words[0]) else None
    reason = " ".join(words[1:] if explicit else words).strip()
    if not reason:
        raise fail("a reason is required: hermesd kanban block [TASK_ID] REASON", EXIT_USAGE)
    task_id, run_id = _own_task(explicit)
    _apply(context, board, task_id, "block",
           lambda conn: tasks.block_task(conn, task_id, reason, expected_run_id=run_id))


@kanban_app.command("unblock")
def unblock(
    context: typer.Context,
    task_id: Annotated[str, typer.Argument(help="Task id.")],
    board: BoardOption = None,
) -> None:
    """Return a blocked task to ready (or todo while a parent is unfinished), with a fresh retry budget."""
    _apply(context, board, task_id, "unblock", lambda conn: tasks.unblock_task(conn, task_id))


@kanban_app.command("archive")
def archive(
    context: typer.Context,
    task_id: Annotated[str, typer.Argument(help="Task id.")],
    board: BoardOption = None,
) -> None:
    """Archive a task; a running task's worker is stopped."""
    with open_board(context, board) as opened, writing(opened) as conn:
        run_id = tasks.require_task(conn, task_id)["current_run_id"]
        run = tasks.get_run(conn, run_id) if run_id else None
        if tasks.archive_task(conn, task_id) is None:
            raise fail(f"task {task_id} is already archived", EXIT_FAILED)
    identity = ((run or {}).get("metadata") or {}).get("hermesd") or {}
    if identity.get("pid") and signal_worker(identity["pid"], identity.get("start_time"), signal.SIGTERM):
        typer.echo(f"sent SIGTERM to worker pid {identity['pid']}; the leader sends SIGKILL if it does not exit")
    typer.echo(f"archived: {task_id}")


@kanban_app.command("comment")
def comment(
    context: typer.Context,
    task_id: Annotated[str, typer.Argument(help="Task id.")],
    text: Annotated[str, typer.Argument(help="Comment text.")],
    author: Annotated[Optional[str], typer.Option(help="Author (default: HERMES_PROFILE, else `user`).")] = None,
    board: BoardOption = None,
) -> None:
    """Add a comment to a task."""
    with open_board(context, board) as opened, writing(opened) as conn:
        tasks.add_comment(conn, task_id, author or _actor(), text)
    typer.echo(f"commented: {task_id}")


@kanban_app.command("heartbeat")
def heartbeat(
    context: typer.Context,
    task_id: Annotated[Optional[str], typer.Argument(help="Task id (default: HERMES_KANBAN_TASK).")] = None,
    note: Annotated[Optional[str], typer.Option(help="What the worker is doing.")] = None,
    board: BoardOption = None,
) -> None:
    """Tell the dispatcher that a running task's worker is alive; extends its claim."""
    task_id, _run_id = _own_task(task_id)
    _apply(context, board, task_id, "heartbeat", lambda conn: tasks.heartbeat(conn, task_id, note))


@kanban_app.command("stats")
def stats(context: typer.Context, board: BoardOption = None, as_json: JsonOption = False) -> None:
    """Count tasks per status and per assignee."""
    with open_board(context, board) as opened:
        result = tasks.board_stats(opened.connection)
    if as_json:
        print_json(result)
        return
    typer.echo(", ".join(f"{status}={count}" for status, count in sorted(result["by_status"].items())) or "no tasks")
    for assignee, counts in sorted(result["by_assignee"].items()):
        typer.echo(f"  {assignee}: " + ", ".join(f"{status}={count}" for status, count in sorted(counts.items())))
    if result["oldest_ready_age_seconds"] is not None:
        typer.echo(f"oldest ready task: {result['oldest_ready_age_seconds']} s old")


@kanban_app.command("watch")
def watch(
    context: typer.Context,
    task_id: Annotated[Optional[str], typer.Option("--task", help="Only events of this task.")] = None,
    since: Annotated[Optional[int], typer.Option(help="Start after this event id (default: only new events).")
                     ] = None,
    timeout: Annotated[Optional[float], typer.Option(help="Stop after this many seconds (default: run until ^C).")
                       ] = None,
    board: BoardOption = None,
    as_json: JsonOption = False,
) -> None:
    """Print task events as they are written, one per line."""
    deadline = None if timeout is None else time.monotonic() + timeout
    with open_board(context, board) as opened:
        conn = opened.connection
        if task_id is not None and tasks.get_task(conn, task_id) is None:
            raise fail(f"task {task_id} not found on board {opened.slug}", EXIT_USAGE)
        last = since if since is not None else conn.execute("SELECT coalesce(max(id), 0) FROM task_events").fetchone()[0]
        try:
            while deadline is None or time.monotonic() < deadline:
                for event in tasks.list_events(conn, task_id=task_id, after_id=last):
                    last = event["id"]
                    if as_json:
                        typer.echo(json.dumps(event, default=str))
                    else:
                        typer.echo(f"{_format_time(event['created_at'])} {event['task_id']} {event['kind']} "
                                   f"{json.dumps(event['payload'])}")
                time.sleep(WATCH_POLL_SECONDS)
        except KeyboardInterrupt:
            pass
