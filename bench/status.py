"""Status: one `hermesd status` call against `supervisorctl status` and `circusctl status`.

Each call is a fresh process, as when a user types the command, so the time includes the
Python interpreter's start and each tool's imports. The calls go round-robin across the
supervisors, all running at the same time on their own copies of the same home.
supervisord's `startsecs` does not change its status command, so only the default is run.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from bench.homes import make_home, profile_names
from bench.peers import running_supervisors
from bench.stats import summarize

# Time for the leader to open every board before the calls start.
SETTLE_SECONDS = 2.0


def plan(quick: bool) -> list[dict[str, int]]:
    if quick:
        return [{"profiles": 2, "boards": 2, "calls": 3}]
    return [
        {"profiles": 5, "boards": 2, "calls": 30},
        {"profiles": 50, "boards": 200, "calls": 20},
    ]


def run(quick: bool, workdir: Path, keys: list[str]) -> dict[str, Any]:
    configs = []
    for config in plan(quick):
        profiles, boards = config["profiles"], config["boards"]
        base = workdir / f"status-{profiles}-{boards}"
        source = make_home(base / "source", profiles, boards)
        seconds: dict[str, list[float]] = {key: [] for key in keys}
        exit_codes: dict[str, list[int]] = {key: [] for key in keys}
        with running_supervisors(keys, base, source, profile_names(profiles)) as supervisors:
            time.sleep(0 if quick else SETTLE_SECONDS)
            for _call in range(config["calls"]):
                for supervisor in supervisors:
                    elapsed, code = supervisor.run_status()
                    seconds[supervisor.key].append(elapsed)
                    exit_codes[supervisor.key].append(code)
        shutil.rmtree(base, ignore_errors=True)
        configs.append({
            "profiles": profiles,
            "boards": boards,
            "calls": config["calls"],
            "supervisors": {
                key: {"seconds": summarize(seconds[key]), "exit_codes": sorted(set(exit_codes[key]))}
                for key in keys
            },
        })
    return {"configs": configs}
