"""Notification latency: from a task's completion to the platform API receiving the message.

hermesd runs on a copy of the real Hermes 0.19 home. The writer profile has a Telegram
token whose API base URL points at a loopback server in this process. Each measured
task is subscribed (telegram, through profile writer) and completed one at a time, so
every sample is one message on an otherwise idle system:

- `commit`: the completion is the same call `hermesd kanban complete` makes
  (`kanban.tasks.complete_task` in a write transaction), run in this process; the clock
  starts when COMMIT returns. This is the notifier's own latency.
- `cli`: the completion is `hermesd kanban complete TASK` in a new process; the clock
  starts just before the process is spawned, so Python's start-up is included.
  `cli_run_ms` is how long that process ran, for comparison.

Tasks are created blocked, so the dispatcher never starts a worker for them, and the
subscriptions start at the task's latest event, as a new Hermes subscription does.

Run `python -m bench.notify [--quick]`; it prints the result as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.stats import summarize
from kanban import tasks
from kanban.store import Board
from tests.fake_platforms import FakePlatformServer

FIXTURE_HOME = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "hermes-0.19-home"
TOKEN = "4242:bench-token"
CHAT_ID = "1001"
READY_TIMEOUT = 60.0
MESSAGE_TIMEOUT = 20.0
# The notifier poll interval of Hermes Agent's gateway, for comparison.
HERMES_POLL_SECONDS = 5.0


def _environment(home: Path, server: FakePlatformServer, sandbox: Path) -> dict[str, str]:
    environ = {key: value for key, value in os.environ.items()
               if not key.startswith(("HERMES_", "HERMESD_", "NOTIFY_SOCKET", "WATCHDOG_", "TELEGRAM_"))}
    environ.update({"HOME": str(sandbox), "HERMES_HOME": str(home), "PYTHONUNBUFFERED": "1",
                    "TELEGRAM_API_BASE_URL": server.url, "HERMESD_LOG_LEVEL": "WARNING"})
    return environ


def _hermesd(environ: dict[str, str], *arguments: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "supervisor", *arguments], env=environ, text=True,
                          capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)


def _prepare_home(root: Path) -> Path:
    home = root / "hermes"
    shutil.copytree(FIXTURE_HOME, home)
    for path in [home, *home.rglob("*")]:
        path.chmod(path.stat().st_mode | 0o200)
    (home / "profiles" / "writer" / ".env").write_text(f"TELEGRAM_BOT_TOKEN={TOKEN}\n")
    return home


def _create_subscribed_tasks(database: Path, count: int) -> list[str]:
    """Create `count` blocked tasks, each with a telegram subscription through profile writer."""
    board = Board("default", database)
    created = []
    try:
        with board.transaction() as connection:
            for number in range(count):
                task_id, _new = tasks.create_task(connection, f"Benchmark task {number}", assignee="writer")
                tasks.block_task(connection, task_id, "waiting for the benchmark")
                latest = connection.execute("SELECT MAX(id) FROM task_events WHERE task_id = ?",
                                            (task_id,)).fetchone()[0]
                connection.execute(
                    "INSERT INTO kanban_notify_subs (task_id, platform, chat_id, thread_id, notifier_profile, "
                    "created_at, last_event_id) VALUES (?, 'telegram', ?, '', 'writer', ?, ?)",
                    (task_id, CHAT_ID, int(time.time()), latest))
                created.append(task_id)
    finally:
        board.close()
    return created


def _wait_for_message(server: FakePlatformServer, task_id: str) -> float:
    """Return the monotonic time at which the message about `task_id` arrived."""
    deadline = time.monotonic() + MESSAGE_TIMEOUT
    while time.monotonic() < deadline:
        for request in server.posts("/sendMessage"):
            if task_id in (request.json or {}).get("text", ""):
                return request.received_at
        with server.arrived:
            server.arrived.wait(0.05)
    raise TimeoutError(f"no message about task {task_id} within {MESSAGE_TIMEOUT:g} s")


def _complete_in_process(database: Path, task_id: str) -> float:
    board = Board("default", database)
    try:
        with board.transaction() as connection:
            tasks.complete_task(connection, task_id, result="benchmark result")
        return time.monotonic()
    finally:
        board.close()


def _milliseconds(values: list[float]) -> dict[str, Any]:
    summary = summarize([value * 1000 for value in values])
    return {key: (round(value, 1) if isinstance(value, float) else value) for key, value in summary.items()}


def run(quick: bool) -> dict[str, Any]:
    """Measure the latency over 200 tasks through the commit path and 50 through the CLI (40 and 10 with `quick`)."""
    commit_count, cli_count = (40, 10) if quick else (200, 50)
    with tempfile.TemporaryDirectory(prefix="hermesd-bench-notify-") as directory, FakePlatformServer() as server:
        root = Path(directory)
        sandbox = root / "user-home"
        sandbox.mkdir()
        home = _prepare_home(root)
        database = home / "kanban.db"
        environ = _environment(home, server, sandbox)
        task_ids = _create_subscribed_tasks(database, commit_count + cli_count)

        started = _hermesd(environ, "up", "--detach", timeout=READY_TIMEOUT)
        if started.returncode != 0:
            raise RuntimeError(f"`hermesd up --detach` failed ({started.returncode}): {started.stderr[-2000:]}")
        try:
            commit_latencies = []
            for task_id in task_ids[:commit_count]:
                committed = _complete_in_process(database, task_id)
                commit_latencies.append(_wait_for_message(server, task_id) - committed)

            cli_latencies = []
            cli_runs = []
            for task_id in task_ids[commit_count:]:
                spawned = time.monotonic()
                result = _hermesd(environ, "kanban", "complete", task_id, "--result", "benchmark result")
                cli_runs.append(time.monotonic() - spawned)
                if result.returncode != 0:
                    raise RuntimeError(f"`hermesd kanban complete {task_id}` failed: {result.stderr[-2000:]}")
                cli_latencies.append(_wait_for_message(server, task_id) - spawned)
            duplicates = len(server.posts("/sendMessage")) - len(task_ids)
        finally:
            _hermesd(environ, "down", "--timeout", "20")

    return {
        "tasks": len(task_ids),
        "commit_to_received_ms": _milliseconds(commit_latencies),
        "cli_start_to_received_ms": _milliseconds(cli_latencies),
        "cli_run_ms": _milliseconds(cli_runs),
        "extra_messages": duplicates,
        "hermes_poll_interval_s": HERMES_POLL_SECONDS,
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.notify", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="measure 50 tasks instead of 250")
    arguments = parser.parse_args()
    print(json.dumps(run(arguments.quick), indent=2))


if __name__ == "__main__":
    main()
