"""The dispatcher driven in-process against a temporary home: exit rules, retries, races, timeouts, descriptors.

These tests call `Dispatcher.run_pass` directly, as the leader's loop would, with
real worker processes (tests/kanban_worker.py under the real wrapper).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from kanban import tasks
from kanban.bootstrap import create_minimal_home
from kanban.dispatcher import Dispatcher
from kanban.home import Home
from kanban.store import Board, create_board
from tests.helpers import wait_for

WORKER = Path(__file__).parent / "kanban_worker.py"
PROFILES = ("default", "researcher", "writer")


def write_profile(home: Home, profile: str, mode: str | list[str], out_dir: Path, extra: str = "") -> None:
    """Write a profile config whose worker is tests/kanban_worker.py in `mode` (or the given command)."""
    directory = home.profile_dir(profile)
    directory.mkdir(parents=True, exist_ok=True)
    command = mode if isinstance(mode, list) else [sys.executable, str(WORKER), str(out_dir), mode, "{task_id}"]
    (directory / "config.yaml").write_text(
        f"kanban:\n  dispatch_in_gateway: false\n  worker_command: {json.dumps(command)}\n{extra}")


class Harness:
    """A temporary home with its boards open as a leader's would be, and a dispatcher over them."""

    def __init__(self, root: Path, root_settings: str = "", **dispatcher_options: Any):
        self.home = Home.resolve(root, environ={})
        create_minimal_home(self.home)
        self.out = root / "out"
        self.out.mkdir()
        (root / "config.yaml").write_text(f"kanban:\n  dispatch_in_gateway: true\n{root_settings}")
        for profile in PROFILES[1:]:
            write_profile(self.home, profile, "ok", self.out)
        self.boards = {"default": Board("default", self.home.board_path("default"))}
        self.boards["default"].take_ownership(1, "test")
        # Tasks are created through a second connection, as the CLI would, so the dispatcher sees the change.
        self.cli = Board("default", self.home.board_path("default"))
        self.dispatcher = Dispatcher(self.home, **dispatcher_options)

    @property
    def board(self) -> Board:
        return self.boards["default"]

    def create(self, title: str, assignee: str = "researcher", **options: Any) -> str:
        with self.cli.transaction() as conn:
            task_id, _created = tasks.create_task(conn, title, assignee=assignee, **options)
        return task_id

    def task(self, task_id: str) -> dict[str, Any]:
        return tasks.require_task(self.board.connection, task_id)

    def runs(self, task_id: str) -> list[dict[str, Any]]:
        return tasks.list_runs(self.board.connection, task_id)

    def events(self, task_id: str, kind: str | None = None) -> list[dict[str, Any]]:
        events = tasks.list_events(self.board.connection, task_id)
        return [event for event in events if kind is None or event["kind"] == kind]

    def starts(self, task_id: str) -> list[dict[str, Any]]:
        path = self.out / f"{task_id}.starts"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def run_until(self, predicate: Any, timeout: float = 20.0, message: str = "condition") -> Any:
        def step() -> Any:
            self.dispatcher.run_pass(self.boards)
            return predicate()
        return wait_for(step, timeout=timeout, interval=0.05, message=message)

    def close(self) -> None:
        for run_id, popen in list(self.dispatcher.children.items()):
            try:
                os.killpg(popen.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            popen.wait(timeout=5)
        self.dispatcher.stop()
        for board in self.boards.values():
            board.close()
        self.cli.close()


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    created = Harness(tmp_path / "hermes")
    yield created
    created.close()


def is_gone(pid: int) -> bool:
    """True when `pid` has exited (a zombie waiting for init to reap it counts as exited)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def make_harness(tmp_path: Path, **options: Any) -> Harness:
    return Harness(tmp_path / "hermes", **options)


# Exit rules

def test_exit_zero_completes_with_output(harness: Harness) -> None:
    task_id = harness.create("collect sources")
    harness.run_until(lambda: harness.task(task_id)["status"] == "done", message="the task to be done")

    task = harness.task(task_id)
    assert "finished " + task_id in task["result"]
    runs = harness.runs(task_id)
    assert len(runs) == 1
    assert runs[0]["outcome"] == "completed"
    assert [event["kind"] for event in harness.events(task_id)] == ["created", "claimed", "spawned", "completed"]


def test_exit_three_retries_then_gives_up(harness: Harness) -> None:
    write_profile(harness.home, "researcher", "exit3", harness.out)
    task_id = harness.create("flaky")
    harness.run_until(lambda: harness.task(task_id)["status"] == "blocked", message="the task to block")

    runs = harness.runs(task_id)
    assert [run["outcome"] for run in runs] == ["crashed", "crashed"]
    assert len(harness.starts(task_id)) == 2
    crashed = harness.events(task_id, "crashed")
    assert crashed[0]["payload"]["exit_code"] == 3
    assert crashed[0]["payload"]["exit_kind"] == "nonzero_exit"
    gave_up = harness.events(task_id, "gave_up")
    assert len(gave_up) == 1
    assert gave_up[0]["payload"]["failures"] == 2
    assert gave_up[0]["payload"]["effective_limit"] == 2
    assert harness.task(task_id)["consecutive_failures"] == 2


def test_max_retries_one_blocks_at_once(harness: Harness) -> None:
    write_profile(harness.home, "researcher", "exit3", harness.out)
    task_id = harness.create("flaky", max_retries=1)
    harness.run_until(lambda: harness.task(task_id)["status"] == "blocked", message="the task to block")

    assert len(harness.runs(task_id)) == 1
    gave_up = harness.events(task_id, "gave_up")
    assert gave_up[0]["payload"]["limit_source"] == "task"
    assert gave_up[0]["payload"]["effective_limit"] == 1


def test_exit_75_requeues_without_failure(tmp_path: Path) -> None:
    harness = make_harness(tmp_path, rate_limit_cooldown_seconds=0.2)
    try:
        write_profile(harness.home, "researcher", "rate-then-ok", harness.out)
        task_id = harness.create("rate limited", max_retries=1)
        harness.run_until(lambda: harness.task(task_id)["status"] == "done", message="the task to be done")

        assert [run["outcome"] for run in harness.runs(task_id)] == ["reclaimed", "completed"]
        assert len(harness.events(task_id, "rate_limited")) == 1
        assert harness.events(task_id, "gave_up") == []
        assert harness.task(task_id)["consecutive_failures"] == 0
    finally:
        harness.close()


def test_exit_75_waits_for_cooldown(tmp_path: Path) -> None:
    cooldown = 3.0
    harness = make_harness(tmp_path, rate_limit_cooldown_seconds=cooldown)
    try:
        write_profile(harness.home, "researcher", "rate-limited", harness.out)
        task_id = harness.create("rate limited")
        harness.run_until(lambda: harness.runs(task_id) and harness.runs(task_id)[0]["outcome"] == "reclaimed",
                          message="the first run to end rate-limited")
        requeued_at = time.monotonic()

        # Passes within the cooldown leave the task ready and start no worker.
        while time.monotonic() - requeued_at < cooldown - 1.0:
            harness.dispatcher.run_pass(harness.boards)
            time.sleep(0.05)
        assert len(harness.starts(task_id)) == 1
        assert harness.task(task_id)["status"] == "ready"
        assert harness.task(task_id)["consecutive_failures"] == 0

        harness.run_until(lambda: len(harness.starts(task_id)) == 2, message="the second start")
        assert time.monotonic() - requeued_at >= cooldown - 0.1
        assert harness.events(task_id, "crashed") == []
    finally:
        harness.close()


def test_missing_command_names_command_and_key(harness: Harness) -> None:
    write_profile(harness.home, "researcher", ["/nonexistent/hermes-worker-xyz", "{task_id}"], harness.out)
    task_id = harness.create("no binary")
    harness.run_until(lambda: harness.task(task_id)["status"] == "blocked", message="the task to block")

    runs = harness.runs(task_id)
    assert [run["outcome"] for run in runs] == ["spawn_failed", "spawn_failed"]
    message = harness.events(task_id, "spawn_failed")[0]["payload"]["error"]
    assert "/nonexistent/hermes-worker-xyz" in message
    assert "kanban.worker_command" in message
    assert str(harness.home.profile_dir("researcher") / "config.yaml") in message
    assert len(harness.events(task_id, "gave_up")) == 1
    assert "kanban.worker_command" in harness.task(task_id)["last_failure_error"]


def test_worker_completing_itself_is_kept(harness: Harness) -> None:
    write_profile(harness.home, "researcher", "complete-self", harness.out)
    task_id = harness.create("self reporting")
    harness.run_until(lambda: harness.task(task_id)["status"] == "done", message="the task to be done")
    harness.run_until(lambda: not harness.dispatcher.children, message="the wrapper to exit")

    assert harness.task(task_id)["result"] == "self"
    assert [event["kind"] for event in harness.events(task_id)] == ["created", "claimed", "spawned", "completed"]


# Order and limits

def test_child_waits_for_parent(harness: Harness) -> None:
    parent = harness.create("parent")
    child = harness.create("child", assignee="writer", parents=[parent])
    assert harness.task(child)["status"] == "todo"
    harness.run_until(lambda: harness.task(child)["status"] == "done", message="the child to be done")

    parent_done = harness.task(parent)["completed_at"]
    assert harness.runs(child)[0]["started_at"] >= parent_done
    assert len(harness.events(child, "promoted")) == 1


def test_untouched_statuses_stay(harness: Harness) -> None:
    triage = harness.create("idea", triage=True)
    blocked = harness.create("stuck")
    with harness.cli.transaction() as conn:
        tasks.block_task(conn, blocked, "waiting")
    for _ in range(20):
        harness.dispatcher.run_pass(harness.boards)

    assert harness.task(triage)["status"] == "triage"
    assert harness.task(blocked)["status"] == "blocked"
    assert harness.runs(triage) == []
    assert harness.starts(triage) == []
    assert harness.starts(blocked) == []


def test_priority_then_age_and_limit(tmp_path: Path) -> None:
    harness = make_harness(tmp_path, root_settings="  max_in_progress: 1\n")
    try:
        write_profile(harness.home, "researcher", "sleep", harness.out)
        old = harness.create("old, low priority")
        time.sleep(1.1)
        urgent = harness.create("new, urgent", priority=5)
        harness.run_until(lambda: harness.task(urgent)["status"] == "running", message="the urgent task to run")
        for _ in range(5):
            harness.dispatcher.run_pass(harness.boards)
        assert harness.task(old)["status"] == "ready"
        assert harness.starts(old) == []
    finally:
        harness.close()


def test_per_profile_limit(tmp_path: Path) -> None:
    harness = make_harness(tmp_path, root_settings="  max_in_progress_per_profile: 1\n")
    try:
        write_profile(harness.home, "researcher", "sleep", harness.out)
        write_profile(harness.home, "writer", "sleep", harness.out)
        first = harness.create("first")
        second = harness.create("second")
        other = harness.create("other profile", assignee="writer")
        harness.run_until(lambda: harness.task(other)["status"] == "running", message="the writer task to run")
        statuses = sorted([harness.task(first)["status"], harness.task(second)["status"]])
        assert statuses == ["ready", "running"]
    finally:
        harness.close()


# Dead and slow workers

def test_sigkilled_worker_is_retried(harness: Harness) -> None:
    write_profile(harness.home, "researcher", "kill-then-ok", harness.out)
    task_id = harness.create("long")
    harness.run_until(lambda: harness.starts(task_id), message="the worker to start")
    os.kill(harness.starts(task_id)[0]["pid"], signal.SIGKILL)
    harness.run_until(lambda: harness.task(task_id)["status"] == "done", message="the retry to complete")

    runs = harness.runs(task_id)
    assert [run["outcome"] for run in runs] == ["crashed", "completed"]
    crashed = harness.events(task_id, "crashed")[0]["payload"]
    assert crashed["exit_kind"] == "signaled"
    assert crashed["exit_code"] == signal.SIGKILL


def test_killed_wrapper_is_noticed(harness: Harness) -> None:
    write_profile(harness.home, "researcher", "kill-then-ok", harness.out)
    task_id = harness.create("long")
    harness.run_until(lambda: harness.starts(task_id), message="the worker to start")
    worker_pid = harness.starts(task_id)[0]["pid"]
    wrapper_pid = harness.task(task_id)["worker_pid"]
    os.kill(wrapper_pid, signal.SIGKILL)
    harness.run_until(lambda: harness.task(task_id)["status"] == "done", message="the retry to complete")

    assert [run["outcome"] for run in harness.runs(task_id)] == ["crashed", "completed"]
    assert is_gone(worker_pid)


def test_worker_past_max_runtime_is_stopped(harness: Harness) -> None:
    write_profile(harness.home, "researcher", "sleep", harness.out)
    task_id = harness.create("too long", max_runtime_seconds=2, max_retries=1)
    started = time.monotonic()
    harness.run_until(lambda: harness.starts(task_id), message="the worker to start")
    harness.run_until(lambda: harness.task(task_id)["status"] == "blocked", message="the timeout to block the task")

    assert time.monotonic() - started < 15
    timed_out = harness.events(task_id, "timed_out")
    assert len(timed_out) == 1
    assert timed_out[0]["payload"]["limit_seconds"] == 2
    assert harness.runs(task_id)[0]["outcome"] == "timed_out"
    assert len(harness.events(task_id, "gave_up")) == 1
    assert is_gone(harness.starts(task_id)[0]["pid"])


def test_sigterm_ignored_gets_sigkill(tmp_path: Path) -> None:
    harness = make_harness(tmp_path, kill_grace_seconds=0.5)
    try:
        write_profile(harness.home, "researcher", "stubborn", harness.out)
        task_id = harness.create("stubborn", max_runtime_seconds=1, max_retries=1)
        harness.run_until(lambda: harness.task(task_id)["status"] == "blocked", message="the task to block")
        payload = harness.events(task_id, "timed_out")[0]["payload"]
        assert payload["sigkill"] is True
    finally:
        harness.close()


# Environment

def test_worker_finds_board_through_kanban_db(harness: Harness) -> None:
    write_profile(harness.home, "researcher", "complete-self", harness.out)
    decoy = harness.home.profile_dir("researcher") / "kanban.db"
    create_board(decoy)
    task_id = harness.create("find me")
    harness.run_until(lambda: harness.task(task_id)["status"] == "done", message="the task to be done")

    environment = harness.starts(task_id)[0]["env"]
    assert environment["HERMES_HOME"] == str(harness.home.profile_dir("researcher"))
    assert environment["HERMES_KANBAN_DB"] == str(harness.home.board_path("default"))
    assert harness.task(task_id)["result"] == "self"
    decoy_board = Board("decoy", decoy)
    try:
        assert decoy_board.task_counts() == {}
    finally:
        decoy_board.close()


def test_worker_environment(harness: Harness) -> None:
    task_id = harness.create("environment")
    harness.run_until(lambda: harness.task(task_id)["status"] == "done", message="the task to be done")

    environment = harness.starts(task_id)[0]["env"]
    run = harness.runs(task_id)[0]
    claimed = harness.events(task_id, "claimed")[0]["payload"]
    assert environment["HERMES_PROFILE"] == "researcher"
    assert environment["HERMES_KANBAN_TASK"] == task_id
    assert environment["HERMES_KANBAN_BOARD"] == "default"
    assert environment["HERMES_KANBAN_RUN_ID"] == str(run["id"])
    assert environment["HERMES_KANBAN_CLAIM_LOCK"] == claimed["lock"]
    assert Path(environment["HERMES_KANBAN_WORKSPACE"]).is_dir()
    log = Path(run["metadata"]["hermesd"]["log"])
    assert f"finished {task_id}" in log.read_text()


# Races and resources

RACER = textwrap.dedent("""
    import sys, time, psutil
    from pathlib import Path
    from kanban.dispatcher import Dispatcher
    from kanban.home import Home
    from kanban.store import Board
    from kanban.workers import WorkerProcess

    root, go, parent = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    home = Home.resolve(root, environ={})
    board = Board("default", home.board_path("default"))
    board.epoch = board.stored_epoch()
    started = psutil.Process(parent).create_time()

    def launch(spec):
        # Starting a real worker takes milliseconds; so does this, which lets the two passes interleave.
        time.sleep(0.01)
        return WorkerProcess(parent, started)

    dispatcher = Dispatcher(home, launcher=launch)
    while not go.exists():
        time.sleep(0.001)
    for _ in range(30):
        dispatcher.run_pass({"default": board})
    board.close()
""")


@pytest.mark.slow
def test_racing_passes_claim_once(tmp_path: Path) -> None:
    harness = make_harness(tmp_path, root_settings="  max_in_progress: 1000\n")
    try:
        ids = [harness.create(f"task {number}") for number in range(100)]
        racer = tmp_path / "racer.py"
        racer.write_text(RACER)
        go = tmp_path / "go"
        command = [sys.executable, str(racer), str(harness.home.root), str(go), str(os.getpid())]
        processes = [subprocess.Popen(command, cwd=Path(__file__).parent.parent) for _ in range(2)]
        time.sleep(1.5)
        go.touch()
        for process in processes:
            assert process.wait(timeout=60) == 0

        conn = harness.board.connection
        for task_id in ids:
            assert harness.task(task_id)["status"] == "running"
            assert len(harness.runs(task_id)) == 1
            assert len(harness.events(task_id, "claimed")) == 1
            assert len(harness.events(task_id, "spawned")) == 1
        total_events = conn.execute("SELECT count(*) FROM task_events").fetchone()[0]
        assert total_events == 3 * len(ids)
        locks = {harness.task(task_id)["claim_lock"] for task_id in ids}
        assert len(locks) == 2, "both passes should have claimed some tasks"
    finally:
        harness.close()


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.slow
def test_descriptors_flat_over_2000_passes(tmp_path: Path) -> None:
    wake = threading.Event()
    harness = make_harness(tmp_path, wake=wake)
    try:
        first = harness.create("warm up")
        harness.run_until(lambda: harness.task(first)["status"] == "done", message="the first task")
        harness.run_until(lambda: not harness.dispatcher.children, message="the first wrapper to exit")
        baseline = open_descriptors()

        created = []
        for number in range(2000):
            if number % 200 == 0:
                created.append(harness.create(f"task {number}"))
            harness.dispatcher.run_pass(harness.boards)
        harness.run_until(lambda: all(harness.task(task_id)["status"] == "done" for task_id in created),
                          message="every task to be done")
        harness.run_until(lambda: not harness.dispatcher.children, message="every wrapper to exit")

        assert open_descriptors() == baseline
        assert wake.is_set(), "the watcher should have woken the leader"
    finally:
        harness.close()


# Workers of closed runs

def start_running(harness: Harness, mode: str, title: str, **options: Any) -> str:
    """Create a researcher task whose worker runs in `mode`; return its id once the worker has started."""
    write_profile(harness.home, "researcher", mode, harness.out)
    task_id = harness.create(title, **options)
    harness.run_until(lambda: harness.starts(task_id) and harness.task(task_id)["worker_pid"],
                      message="the worker to start")
    return task_id


def wrapper_and_worker(harness: Harness, task_id: str) -> tuple[int, int]:
    """Return the pids of the running task's wrapper and of the stand-in worker under it."""
    starts = harness.starts(task_id)
    return harness.task(task_id)["worker_pid"], starts[-1]["pid"]


def block_as_user(harness: Harness, task_id: str) -> None:
    with harness.cli.transaction() as conn:
        assert tasks.block_task(conn, task_id, "stop")


def test_block_then_unblock_waits_for_old_worker(tmp_path: Path) -> None:
    harness = make_harness(tmp_path, release_grace_seconds=2.0, kill_grace_seconds=1.0)
    try:
        task_id = start_running(harness, "sleep", "blocked while running")
        first_worker = harness.starts(task_id)[0]["pid"]
        block_as_user(harness, task_id)
        with harness.cli.transaction() as conn:
            assert tasks.unblock_task(conn, task_id)

        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            harness.dispatcher.run_pass(harness.boards)
            time.sleep(0.05)
        assert len(harness.starts(task_id)) == 1, "a second worker started while the first still ran"
        assert harness.task(task_id)["status"] == "ready"

        harness.run_until(lambda: len(harness.starts(task_id)) == 2, message="the second worker to start")
        assert is_gone(first_worker)
        assert [run["outcome"] for run in harness.runs(task_id)] == ["blocked", None]
        assert harness.events(task_id, "crashed") == []
        assert harness.task(task_id)["consecutive_failures"] == 0
    finally:
        harness.close()


def test_blocked_stubborn_worker_is_killed(tmp_path: Path) -> None:
    harness = make_harness(tmp_path, release_grace_seconds=0.5, kill_grace_seconds=0.5)
    try:
        task_id = start_running(harness, "stubborn", "blocked and stubborn")
        wrapper, worker = wrapper_and_worker(harness, task_id)
        block_as_user(harness, task_id)

        harness.run_until(lambda: is_gone(worker) and is_gone(wrapper), message="the worker to be killed")
        harness.run_until(lambda: not harness.dispatcher.states["default"].released,
                          message="the dispatcher to forget the worker")
        assert harness.task(task_id)["status"] == "blocked"
        assert harness.events(task_id, "crashed") == []
        runs_directory = harness.home.kanban_root / "kanban" / "logs" / "runs"
        assert list(runs_directory.iterdir()) == []
    finally:
        harness.close()


def test_worker_completing_itself_gets_grace(tmp_path: Path) -> None:
    harness = make_harness(tmp_path, release_grace_seconds=2.0)
    try:
        write_profile(harness.home, "researcher", "complete-then-linger", harness.out)
        task_id = harness.create("completes, then lingers")
        harness.run_until(lambda: harness.task(task_id)["status"] == "done", message="the task to be done")
        completed_at = harness.task(task_id)["completed_at"]
        sigterm = harness.out / f"{task_id}.sigterm"
        harness.run_until(sigterm.exists, message="the lingering worker to get SIGTERM")

        assert float(sigterm.read_text()) - completed_at >= 2.0, "SIGTERM came before the grace time was over"
        assert harness.task(task_id)["result"] == "self"
        assert harness.task(task_id)["consecutive_failures"] == 0
        kinds = [event["kind"] for event in harness.events(task_id)]
        assert kinds == ["created", "claimed", "spawned", "completed"]
    finally:
        harness.close()


def test_new_leader_stops_released_worker(tmp_path: Path) -> None:
    harness = make_harness(tmp_path, release_grace_seconds=0.5, kill_grace_seconds=0.5)
    first = harness.dispatcher
    try:
        task_id = start_running(harness, "sleep", "blocked across a failover")
        _wrapper, worker = wrapper_and_worker(harness, task_id)
        block_as_user(harness, task_id)
        # The next leader has no memory of the worker, so it must find it through the run's pid file.
        harness.dispatcher = Dispatcher(harness.home, release_grace_seconds=0.5, kill_grace_seconds=0.5)

        harness.run_until(lambda: is_gone(worker), message="the new leader to stop the worker")
        assert harness.task(task_id)["status"] == "blocked"
    finally:
        harness.dispatcher.children.update(first.children)
        harness.close()


# Interrupted workers

def terminate_each(pid: int) -> None:
    """Send SIGTERM to `pid` and each of its descendants, one by one, as the supervisor does at shutdown."""
    wrapper = psutil.Process(pid)
    for process in [wrapper, *wrapper.children(recursive=True)]:
        try:
            process.terminate()
        except (psutil.NoSuchProcess, ProcessLookupError):
            pass


def test_shutdown_requeues_without_failure(harness: Harness) -> None:
    task_id = start_running(harness, "kill-then-ok", "interrupted by hermesd down", max_retries=1)
    terminate_each(harness.task(task_id)["worker_pid"])
    harness.run_until(lambda: harness.task(task_id)["status"] == "done", message="the restarted task to complete")

    assert [run["outcome"] for run in harness.runs(task_id)] == ["reclaimed", "completed"]
    reclaimed = harness.events(task_id, "reclaimed")
    assert len(reclaimed) == 1
    assert reclaimed[0]["payload"]["reason"] == "interrupted"
    assert reclaimed[0]["payload"]["signal"] == signal.SIGTERM
    assert harness.events(task_id, "crashed") == []
    assert harness.events(task_id, "gave_up") == []
    assert harness.task(task_id)["consecutive_failures"] == 0


def test_sigterm_to_wrapper_reaches_worker(harness: Harness) -> None:
    task_id = start_running(harness, "kill-then-ok", "wrapper interrupted", max_retries=1)
    wrapper, worker = wrapper_and_worker(harness, task_id)
    os.kill(wrapper, signal.SIGTERM)
    harness.run_until(lambda: harness.task(task_id)["status"] == "done", message="the restarted task to complete")

    assert is_gone(worker)
    assert [run["outcome"] for run in harness.runs(task_id)] == ["reclaimed", "completed"]
    assert harness.events(task_id, "gave_up") == []


def test_interrupt_survives_sigkill(tmp_path: Path) -> None:
    harness = make_harness(tmp_path)
    try:
        task_id = start_running(harness, "stubborn", "interrupted, then killed", max_retries=1)
        wrapper, worker = wrapper_and_worker(harness, task_id)
        status_file = Path(harness.runs(task_id)[0]["metadata"]["hermesd"]["status_file"])
        os.kill(wrapper, signal.SIGTERM)
        wait_for(status_file.exists, message="the wrapper to record the interruption")
        os.killpg(wrapper, signal.SIGKILL)
        harness.run_until(lambda: harness.runs(task_id)[0]["outcome"] is not None, message="the run to end")

        assert is_gone(worker)
        assert harness.runs(task_id)[0]["outcome"] == "reclaimed"
        assert harness.events(task_id, "gave_up") == []
        assert harness.task(task_id)["consecutive_failures"] == 0
    finally:
        harness.close()
