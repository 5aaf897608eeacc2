"""Process identity: a pid together with its start time, so that a reused pid is never mistaken."""

from __future__ import annotations

import psutil

# psutil reports start times with a resolution of 1/100 s on Linux (clock ticks); allow for rounding.
START_TIME_TOLERANCE = 0.05


def start_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, ValueError, TypeError):
        return None


def is_same_process(pid: int | None, expected_start_time: float | None) -> bool:
    """True when `pid` runs, is not a zombie, and started at `expected_start_time`."""
    if not pid or expected_start_time is None:
        return False
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        actual = process.create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, ValueError, TypeError):
        return False
    return abs(actual - expected_start_time) <= START_TIME_TOLERANCE
