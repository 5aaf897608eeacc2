"""Idle cost: the supervisor process's CPU time and resident memory while its gateways idle.

All supervisors run at the same time, each with its own copy of the home, and are sampled
once a second over the same window, so they share whatever else the machine is doing.
Only the supervisor process is counted (hermesd's `supervise` process, supervisord,
circusd); the gateways' totals are recorded beside it for context.
"""

from __future__ import annotations

import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import psutil

from bench.homes import make_home, profile_names
from bench.peers import Supervisor, running_supervisors

SETTLE_SECONDS = 5.0
SAMPLE_SECONDS = 1.0
BOARDS = 2
MEGABYTE = 1024 * 1024


def plan(quick: bool) -> list[dict[str, float]]:
    if quick:
        return [{"profiles": 2, "window": 3.0}]
    return [{"profiles": 5, "window": 60.0}, {"profiles": 50, "window": 60.0}]


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def _gateway_totals(supervisor: Supervisor) -> tuple[float, float]:
    """Sum of CPU seconds and resident MB of every process below the supervisor."""
    cpu = rss = 0.0
    for process in supervisor.processes()[1:]:
        try:
            cpu += cpu_seconds(process)
            rss += process.memory_info().rss / MEGABYTE
        except psutil.Error:
            continue
    return cpu, rss


def measure_window(supervisors: list[Supervisor], window: float) -> dict[str, dict[str, Any]]:
    """Sample every supervisor once a second for `window` seconds."""
    roots = {supervisor.key: psutil.Process(supervisor.supervisor_pid()) for supervisor in supervisors}
    first_cpu = {key: cpu_seconds(process) for key, process in roots.items()}
    first_gateway_cpu = {supervisor.key: _gateway_totals(supervisor)[0] for supervisor in supervisors}
    rss: dict[str, list[float]] = {key: [] for key in roots}
    gateway_rss: dict[str, list[float]] = {key: [] for key in roots}

    started = time.monotonic()
    while time.monotonic() - started < window:
        time.sleep(SAMPLE_SECONDS)
        for supervisor in supervisors:
            rss[supervisor.key].append(roots[supervisor.key].memory_info().rss / MEGABYTE)
            gateway_rss[supervisor.key].append(_gateway_totals(supervisor)[1])
    elapsed = time.monotonic() - started

    results = {}
    for supervisor in supervisors:
        key = supervisor.key
        results[key] = {
            "cpu_seconds": cpu_seconds(roots[key]) - first_cpu[key],
            "window_seconds": elapsed,
            "rss_mb": {"median": statistics.median(rss[key]), "max": max(rss[key])},
            "gateways": len(supervisor.processes()) - 1,
            "gateways_cpu_seconds": _gateway_totals(supervisor)[0] - first_gateway_cpu[key],
            "gateways_rss_mb": statistics.median(gateway_rss[key]),
        }
    return results


def run(quick: bool, workdir: Path, keys: list[str]) -> dict[str, Any]:
    configs = []
    for config in plan(quick):
        profiles = int(config["profiles"])
        base = workdir / f"idle-{profiles}"
        source = make_home(base / "source", profiles, BOARDS)
        with running_supervisors(keys, base, source, profile_names(profiles)) as supervisors:
            time.sleep(1.0 if quick else SETTLE_SECONDS)
            results = measure_window(supervisors, config["window"])
        shutil.rmtree(base, ignore_errors=True)
        configs.append({"profiles": profiles, "boards": BOARDS, "window_seconds": config["window"],
                        "supervisors": results})
    return {"configs": configs}
