"""Test helpers: a `hermesd` runner for a temporary home, waiting, and process inspection.

Every test works on its own copy of `tests/fixtures/hermes-0.19-home` under pytest's
temporary directory, with HOME pointed there too, so nothing touches the real `~/.hermes`.
The runner stops everything it started: `hermesd down`, then SIGKILL to any process left
whose command line names the temporary home (only processes these tests started do).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

FIXTURE_HOME = Path(__file__).parent / "fixtures" / "hermes-0.19-home"


def wait_for(predicate: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05,
             message: str = "condition") -> Any:
    """Poll `predicate` until it returns a true value; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout} s waiting for {message} (last value: {last!r})")


def board_file_holders(home: Path) -> dict[int, list[str]]:
    """Pids with any kanban.db, -wal or -shm file under `home` open, read from every process's open files."""
    holders: dict[int, list[str]] = {}
    root = str(home)
    for process in psutil.process_iter(["pid"]):
        try:
            files = [item.path for item in process.open_files()]
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        opened = [path for path in files if path.startswith(root)
                  and os.path.basename(path) in ("kanban.db", "kanban.db-wal", "kanban.db-shm")]
        if opened:
            holders[process.pid] = opened
    return holders


def processes_of_home(home: Path) -> list[psutil.Process]:
    """Every live process whose command line names `home` (the supervisor, gateways, workers)."""
    found = []
    root = str(home)
    for process in psutil.process_iter(["pid", "cmdline", "environ"]):
        try:
            cmdline = " ".join(process.info["cmdline"] or [])
            environ = process.info["environ"] or {}
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if process.pid == os.getpid():
            continue
        if root in cmdline or environ.get("HERMESD_TEST_HOME") == root:
            if process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
    return found


class Hermesd:
    """Runs the `hermesd` CLI against one temporary home."""

    def __init__(self, home: Path, sandbox: Path):
        self.home = home
        self.environ = {key: value for key, value in os.environ.items()
                        if not key.startswith(("HERMES_", "HERMESD_", "NOTIFY_SOCKET", "WATCHDOG_"))}
        self.environ["HOME"] = str(sandbox)
        self.environ["HERMES_HOME"] = str(home)
        self.environ["HERMESD_TEST_HOME"] = str(home)
        self.environ["PYTHONUNBUFFERED"] = "1"

    def run(self, *arguments: str, timeout: float = 90.0, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
        environ = dict(self.environ)
        environ.update(env or {})
        return subprocess.run([sys.executable, "-m", "supervisor", *arguments], env=environ, text=True,
                              capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)

    def status(self, *names: str) -> dict[str, Any]:
        result = self.run("status", "--json", *names)
        assert result.returncode in (0, 3), f"status failed ({result.returncode}): {result.stderr}"
        return json.loads(result.stdout)

    def profile(self, name: str) -> dict[str, Any]:
        for entry in self.status()["profiles"]:
            if entry["name"] == name:
                return entry
        raise AssertionError(f"profile {name} missing from status")

    def up_detached(self, *arguments: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        result = self.run("up", "--detach", *arguments, env=env)
        assert result.returncode == 0, f"up --detach failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
        return result

    def supervisor_pid(self) -> int | None:
        return self.status()["supervisor"].get("pid")

    def cleanup(self) -> None:
        if self.home.exists():
            try:
                self.run("down", "--timeout", "20", timeout=40)
            except subprocess.TimeoutExpired:
                pass
        leftovers = processes_of_home(self.home)
        for process in leftovers:
            try:
                process.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(leftovers, timeout=5)


def set_dispatch(home: Path, profile: str, value: str) -> None:
    """Write `kanban.dispatch_in_gateway: value` into a profile's config.yaml."""
    directory = home if profile == "default" else home / "profiles" / profile
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.yaml").write_text(f"kanban:\n  dispatch_in_gateway: {value}\n")


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())
