"""Start-up: from the start command to every gateway ready, for each supervisor, interleaved.

"Ready" is the same event for every supervisor: the last gateway's `gateway NAME started`
log line, timed by the line itself. Each supervisor's own notion is reported beside it:
`hermesd up --detach` returning (it waits for every READY message and every candidate's
election role), supervisord reporting every program RUNNING (after `startsecs`), and
circus reporting every watcher active. Every measurement starts on a fresh copy of the
home, so hermesd also creates its state directory each time, as on a first start.
"""

from __future__ import annotations

import shutil
import time
import traceback
from pathlib import Path
from typing import Any

from bench.homes import copy_home, make_home, profile_names
from bench.peers import ReadyWatcher, make_supervisor
from bench.stats import summarize

START_TIMEOUT_SECONDS = 120.0
BOARDS = 2


def plan(quick: bool) -> list[dict[str, int]]:
    """Profile counts and repetitions; the graceful stop is timed only where it stays short."""
    if quick:
        return [{"profiles": 2, "repetitions": 1, "timed_stops": 1}]
    return [
        {"profiles": 5, "repetitions": 10, "timed_stops": 1},
        {"profiles": 20, "repetitions": 5, "timed_stops": 1},
        {"profiles": 50, "repetitions": 3, "timed_stops": 0},
    ]


def measure_once(key: str, directory: Path, source_home: Path, profiles: int, timed_stop: bool) -> dict[str, Any]:
    """Start one supervisor on a fresh copy of `source_home`, wait for every gateway, stop it."""
    home = copy_home(source_home, directory / "home")
    supervisor = make_supervisor(key, directory, home, profile_names(profiles))
    watcher = ReadyWatcher(supervisor.gateway_logs())
    result: dict[str, Any] = {}
    started = time.time()
    try:
        supervisor.launch()
        own_ready = supervisor.wait_own_ready(START_TIMEOUT_SECONDS)
        ready = watcher.wait(START_TIMEOUT_SECONDS)
        result["ready"] = max(ready.values()) - started
        result["first_ready"] = min(ready.values()) - started
        result["own_ready"] = own_ready - started
    finally:
        if timed_stop:
            result["stop"] = supervisor.stop(graceful=True)
        else:
            supervisor.clean_up()
    shutil.rmtree(directory, ignore_errors=True)
    return result


def run(quick: bool, workdir: Path, keys: list[str]) -> dict[str, Any]:
    sizes = []
    for size in plan(quick):
        profiles = size["profiles"]
        source = make_home(workdir / f"startup-source-{profiles}", profiles, BOARDS)
        samples: dict[str, dict[str, list[float]]] = {
            key: {"ready": [], "first_ready": [], "own_ready": [], "stop": []} for key in keys}
        errors: dict[str, list[str]] = {key: [] for key in keys}
        for repetition in range(size["repetitions"]):
            # Rotate the order so that no supervisor always runs right after the same one.
            shift = repetition % len(keys)
            for key in keys[shift:] + keys[:shift]:
                directory = workdir / f"startup-{profiles}-{key}-{repetition}"
                try:
                    result = measure_once(key, directory, source, profiles, repetition < size["timed_stops"])
                except Exception as error:  # noqa: BLE001 - record it and measure the others
                    errors[key].append(f"{type(error).__name__}: {error}")
                    print(f"bench: startup {profiles} profiles, {key}, repetition {repetition}: {error}")
                    traceback.print_exc()
                    continue
                for name, value in result.items():
                    samples[key][name].append(value)
        shutil.rmtree(source, ignore_errors=True)
        sizes.append({
            "profiles": profiles,
            "boards": BOARDS,
            "repetitions": size["repetitions"],
            "supervisors": {
                key: {
                    **{name: summarize(values) for name, values in samples[key].items()},
                    "samples": samples[key],
                    "errors": errors[key],
                }
                for key in keys
            },
        })
    return {"sizes": sizes}
