"""Failover time: from SIGKILL of the leader's gateway to the new leader having every board open.

Runs `hermesd up --detach` on a copy of the fixture home with three candidates
(`default`, `coder`, `writer`), then kills the current leader again and again. The kill
time is taken just before `os.kill`; the takeover times come from the owner record that
each new leader writes beside the lock (`took_over_at`: lock taken, `boards_open_at`:
every board open). Both clocks are this machine's wall clock.

    python -m bench.failover [--quick] [--kills N]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.stats import summarize

FIXTURE_HOME = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "hermes-0.19-home"

# Restart killed gateways quickly and never give up on them, so that 50 kills in a row are possible.
BENCH_ROOT_CONFIG = """\
kanban:
  dispatch_interval_seconds: 60
hermesd:
  backoff_initial: 0.05
  backoff_max: 0.2
  max_failures: 100000
"""


def _prepare_home(directory: Path) -> Path:
    home = directory / "hermes"
    shutil.copytree(FIXTURE_HOME, home)
    (home / "config.yaml").write_text(BENCH_ROOT_CONFIG)
    for profile in ("coder", "writer"):
        (home / "profiles" / profile / "config.yaml").write_text("kanban:\n  dispatch_in_gateway: true\n")
    return home


def _hermesd(home: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    environ = {key: value for key, value in os.environ.items() if not key.startswith(("HERMES_", "HERMESD_"))}
    environ["HERMES_HOME"] = str(home)
    return subprocess.run([sys.executable, "-m", "supervisor", *arguments], env=environ, text=True,
                          capture_output=True, timeout=120)


def _read_owner(home: Path) -> dict[str, Any]:
    try:
        return json.loads((home / "kanban" / ".dispatcher.owner.json").read_text())
    except (OSError, ValueError):
        return {}


def _candidates_running(home: Path) -> bool:
    status = json.loads(_hermesd(home, "status", "--json").stdout)
    roles = {entry["name"]: (entry["state"], entry["role"]) for entry in status["profiles"]}
    wanted = [roles.get(name) for name in ("default", "coder", "writer")]
    return sum(1 for state, role in wanted if state == "running" and role == "leader") == 1 and all(
        state == "running" and role in ("leader", "standby") for state, role in wanted)


def _wait(predicate, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.002)
    raise TimeoutError("the new leader did not write its owner record in time")


def measure(kills: int) -> dict[str, Any]:
    to_lock_ms: list[float] = []
    to_boards_ms: list[float] = []
    with tempfile.TemporaryDirectory(prefix="hermesd-failover-") as directory:
        home = _prepare_home(Path(directory))
        started = _hermesd(home, "up", "--detach")
        if started.returncode != 0:
            raise RuntimeError(f"hermesd up failed: {started.stderr}")
        try:
            for _ in range(kills):
                _wait(lambda: _candidates_running(home), timeout=30)
                leader = _read_owner(home)
                killed_at = time.time()
                os.kill(leader["pid"], signal.SIGKILL)
                record = _wait(lambda: (owner := _read_owner(home)).get("pid") not in (None, leader["pid"])
                               and owner, timeout=30)
                to_lock_ms.append((record["took_over_at"] - killed_at) * 1000)
                to_boards_ms.append((record["boards_open_at"] - killed_at) * 1000)
        finally:
            _hermesd(home, "down")

    return {
        "kills": kills,
        "to_lock_ms": summarize(to_lock_ms),
        "to_boards_open_ms": summarize(to_boards_ms),
        "comparison_s": {
            "kubernetes_lease_default": 15,
            "etcd_session_default_ttl": 60,
            "consul_lock_delay_default": 15,
            "hermes_agent_0_19": None,
        },
    }


def run(quick: bool) -> dict[str, Any]:
    return measure(kills=5 if quick else 50)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="5 kills instead of 50")
    parser.add_argument("--kills", type=int, default=None, help="number of leader kills")
    arguments = parser.parse_args()
    result = measure(arguments.kills) if arguments.kills else run(arguments.quick)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
