"""Board file descriptors held across every process of a run.

hermesd: the supervisor and every gateway, counted from `/proc/PID/fd` (psutil's
`open_files`) once the leader has opened every board. Only the leader should hold any.

Without hermesd, every Hermes gateway with `dispatch_in_gateway: true` opens every board
and keeps `kanban.db`, `kanban.db-wal` and `kanban.db-shm` open. That count is both
computed (profiles x boards x 3) and measured: one `bench.board_holder` process per
profile opens every board as such a gateway does, and its files are counted the same way.
The hermesd gateway itself cannot show this, because it opens boards only while it leads.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from bench.homes import copy_home, make_home, profile_names
from bench.peers import bench_environment, make_supervisor

BOARD_FILE_NAMES = ("kanban.db", "kanban.db-wal", "kanban.db-shm")
WAIT_SECONDS = 60.0


def plan(quick: bool) -> dict[str, int]:
    return {"profiles": 2, "boards": 3} if quick else {"profiles": 5, "boards": 20}


def board_files_by_process(processes: list[psutil.Process], home: Path) -> dict[int, int]:
    """Map each pid to the number of board database files under `home` it has open."""
    root = str(home)
    counts: dict[int, int] = {}
    for process in processes:
        try:
            files = process.open_files()
        except psutil.Error:
            continue
        counts[process.pid] = sum(1 for item in files if item.path.startswith(root)
                                  and os.path.basename(item.path) in BOARD_FILE_NAMES)
    return counts


def measure_hermesd(directory: Path, source: Path, profiles: int, boards: int) -> dict[str, Any]:
    home = copy_home(source, directory / "home")
    supervisor = make_supervisor("hermesd", directory, home, profile_names(profiles))
    expected = boards * len(BOARD_FILE_NAMES)
    try:
        supervisor.launch()
        supervisor.wait_own_ready(WAIT_SECONDS)
        deadline = time.monotonic() + WAIT_SECONDS
        while True:
            processes = supervisor.processes()
            counts = board_files_by_process(processes, home)
            if sum(counts.values()) >= expected or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        holders = sum(1 for count in counts.values() if count)
        return {"processes": len(processes), "processes_holding_boards": holders,
                "board_fds": sum(counts.values())}
    finally:
        supervisor.clean_up()


def measure_every_gateway(directory: Path, source: Path, profiles: int) -> dict[str, Any]:
    """Run one board holder per profile and count what they hold together."""
    home = copy_home(source, directory / "home")
    environ = bench_environment(directory, home)
    holders: list[subprocess.Popen[str]] = []
    try:
        for _profile in profile_names(profiles):
            holders.append(subprocess.Popen([sys.executable, "-m", "bench.board_holder", "--home", str(home)],
                                            env=environ, cwd=Path(__file__).resolve().parents[1],
                                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True))
        for holder in holders:
            assert holder.stdout is not None
            line = holder.stdout.readline()
            if not line.startswith("holding"):
                raise RuntimeError(f"board holder {holder.pid} failed: {line!r} (exit status {holder.poll()})")
        processes = [psutil.Process(holder.pid) for holder in holders]
        counts = board_files_by_process(processes, home)
        return {"processes": len(processes), "processes_holding_boards": sum(1 for count in counts.values() if count),
                "board_fds": sum(counts.values())}
    finally:
        for holder in holders:
            if holder.poll() is None:
                holder.terminate()
        for holder in holders:
            try:
                holder.wait(timeout=10)
            except subprocess.TimeoutExpired:
                holder.kill()
                holder.wait()


def run(quick: bool, workdir: Path) -> dict[str, Any]:
    size = plan(quick)
    profiles, boards = size["profiles"], size["boards"]
    base = workdir / "fds"
    source = make_home(base / "source", profiles, boards)
    try:
        hermesd = measure_hermesd(base / "hermesd", source, profiles, boards)
        every_gateway = measure_every_gateway(base / "every-gateway", source, profiles)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return {
        "profiles": profiles,
        "boards": boards,
        "hermesd": hermesd,
        "every_gateway_measured": every_gateway,
        "every_gateway_computed": profiles * boards * len(BOARD_FILE_NAMES),
    }
