"""Dispatch latency: from `hermesd kanban create` of a ready task to its worker starting; and the leader's idle CPU.

Runs `hermesd up --detach` on a fresh home with one profile whose worker command is
`/bin/sh -c 'date +%s.%N > OUT/{task_id}.start'`, so the worker's first action
records the wall-clock time it started. Tasks are created one at a time through the
real `hermesd kanban create` command, run in this process with typer's CliRunner, so
the clock starts when the task's transaction has committed rather than after a Python
start-up. Then the leader's gateway is left idle and its CPU time is sampled.

    python -m bench.dispatch [--quick] [--tasks N]
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

import psutil

from bench.stats import summarize

# Hermes Agent's default `kanban.dispatch_interval_seconds`: a new ready task waits for the next tick.
HERMES_TICK_SECONDS = 60

ROOT_CONFIG = """\
kanban:
  dispatch_in_gateway: true
  dispatch_interval_seconds: 60
"""


def _prepare_home(directory: Path) -> tuple[Path, Path]:
    from kanban.store import create_board

    home = directory / "hermes"
    out = directory / "out"
    out.mkdir()
    (home / "profiles" / "researcher").mkdir(parents=True)
    (home / "config.yaml").write_text(ROOT_CONFIG)
    command = ["/bin/sh", "-c", f"date +%s.%N > {out}/{{task_id}}.start"]
    (home / "profiles" / "researcher" / "config.yaml").write_text(
        f"kanban:\n  dispatch_in_gateway: false\n  worker_command: {json.dumps(command)}\n")
    create_board(home / "kanban.db")
    return home, out


def _environment(home: Path) -> dict[str, str]:
    environ = {key: value for key, value in os.environ.items() if not key.startswith(("HERMES_", "HERMESD_"))}
    environ["HERMES_HOME"] = str(home)
    return environ


def _hermesd(home: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "supervisor", "--home", str(home), *arguments],
                          env=_environment(home), text=True, capture_output=True, timeout=120)


def _wait_for_file(path: Path, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            text = path.read_text().strip()
        except FileNotFoundError:
            text = ""
        if text:
            return float(text)
        time.sleep(0.001)
    raise TimeoutError(f"no worker started within {timeout} s ({path} missing)")


def _leader_process(home: Path) -> psutil.Process:
    status = json.loads(_hermesd(home, "status", "--json").stdout)
    for entry in status["profiles"]:
        if entry.get("role") == "leader":
            return psutil.Process(entry["pid"])
    raise RuntimeError("no leader in `hermesd status`")


def measure_latency(home: Path, out: Path, count: int) -> dict[str, list[float]]:
    from typer.testing import CliRunner

    from supervisor.cli import app

    runner = CliRunner()
    from_commit, from_command = [], []
    for number in range(count):
        started = time.time()
        result = runner.invoke(app, ["--home", str(home), "kanban", "create", f"bench task {number}",
                                     "--assignee", "researcher"])
        committed = time.time()
        if result.exit_code != 0:
            raise RuntimeError(f"hermesd kanban create failed: {result.output}")
        task_id = result.stdout.strip()
        worker_started = _wait_for_file(out / f"{task_id}.start", timeout=30)
        from_commit.append((worker_started - committed) * 1000)
        from_command.append((worker_started - started) * 1000)
    return {"from_commit_ms": from_commit, "from_command_ms": from_command}


def measure_idle_cpu(leader: psutil.Process, window: float) -> dict[str, Any]:
    before = leader.cpu_times()
    time.sleep(window)
    after = leader.cpu_times()
    used = (after.user + after.system) - (before.user + before.system)
    return {"window_seconds": window, "cpu_seconds": used, "cpu_percent": 100 * used / window}


def run(quick: bool, tasks: int | None = None) -> dict[str, Any]:
    count = tasks or (50 if quick else 200)
    directory = Path(tempfile.mkdtemp(prefix="hermesd-bench-dispatch-"))
    home, out = _prepare_home(directory)
    try:
        started = _hermesd(home, "up", "--detach")
        if started.returncode != 0:
            raise RuntimeError(f"hermesd up failed: {started.stdout}{started.stderr}")
        # One task first, so that the leader's start-up is not in the numbers.
        measure_latency(home, out, 1)
        latency = measure_latency(home, out, count)
        time.sleep(2)
        idle = measure_idle_cpu(_leader_process(home), 5.0 if quick else 30.0)
    finally:
        _hermesd(home, "down")
        shutil.rmtree(directory, ignore_errors=True)
    return {
        "tasks": count,
        "from_commit_ms": summarize(latency["from_commit_ms"]),
        "from_command_ms": summarize(latency["from_command_ms"]),
        "leader_idle": idle,
        "hermes_tick_seconds": HERMES_TICK_SECONDS,
    }


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.dispatch", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="50 tasks and a 5 s idle window")
    parser.add_argument("--tasks", type=int, default=None, help="number of tasks to measure")
    arguments = parser.parse_args()
    print(json.dumps(run(arguments.quick, arguments.tasks), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
