"""`python -m bench`: run the benchmarks, write JSON and a table to bench/results/, print the table.

Run it from the repository root with the Python of hermesd's environment (`pip install -e .`).
The peers run from their own venv, which `python -m bench.peers --install` creates; without
it the peers are skipped and only hermesd is measured. Sections:

- startup, status, idle, fds: hermesd against supervisord and circus (this package);
- failover, dispatch, notify: each module's `run(quick) -> dict`, run when the module
  exists. A missing module or an error is recorded in the results, and the rest still run.

Benchmarks report numbers and never fail on a time limit. The exit status is 1 when a
section raised an error, so a broken harness is noticed, and 0 otherwise (also when a
section's module does not exist yet: that section is recorded as skipped).
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import psutil

from bench import fds, idle, peers_venv, report, startup, status
from bench.peers import PEER_OF_KEY, SUPERVISOR_KEYS, peers_available

PEER_SECTIONS = ("startup", "status", "idle", "fds")
OTHER_SECTIONS = ("failover", "dispatch", "notify")
SECTIONS = PEER_SECTIONS + OTHER_SECTIONS
REPOSITORY = Path(__file__).resolve().parents[1]
DEFAULT_RESULTS_DIR = REPOSITORY / "bench" / "results"


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes and few repetitions: a smoke run of under a minute")
    parser.add_argument("--only", action="append", default=[], metavar="SECTION",
                        help=f"run only these sections (repeatable or comma-separated): {', '.join(SECTIONS)}")
    parser.add_argument("--results-dir", type=Path, default=DEFAULT_RESULTS_DIR,
                        help="directory for the JSON and table files (default: bench/results)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary homes and logs of the run for inspection")
    arguments = parser.parse_args(argv)
    selected = [part.strip() for value in arguments.only for part in value.split(",") if part.strip()]
    unknown = [name for name in selected if name not in SECTIONS]
    if unknown:
        parser.error(f"unknown section {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    arguments.sections = [name for name in SECTIONS if not selected or name in selected]
    return arguments


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git_commit() -> str | None:
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPOSITORY, capture_output=True, text=True,
                                timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None


def machine() -> dict[str, Any]:
    peer_versions = peers_venv.versions()
    return {
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 1024 ** 3, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_at_start": os.getloadavg(),
        "hermesd_commit": git_commit(),
        "supervisor_version": peer_versions["supervisor"],
        "circus_version": peer_versions["circus"],
    }


class SectionMissing(Exception):
    """A section's module is not in this checkout yet."""


def run_section(name: str, function: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run one section; an exception is recorded and printed instead of ending the run."""
    print(f"bench: running {name} ...", flush=True)
    started = time.monotonic()
    try:
        result = function()
    except SectionMissing as missing:
        print(f"bench: skipping {name}: {missing}", flush=True)
        result = {"skipped": str(missing)}
    except Exception as error:  # noqa: BLE001 - one broken section must not lose the others
        traceback.print_exc()
        print(f"bench: {name} failed: {type(error).__name__}: {error}", flush=True)
        result = {"error": f"{type(error).__name__}: {error}"}
    result["seconds"] = round(time.monotonic() - started, 1)
    print(f"bench: {name} took {result['seconds']:.0f} s", flush=True)
    return result


def run_other(name: str, quick: bool) -> dict[str, Any]:
    """Import `bench.<name>` lazily and return {"result": run(quick)}; raise when it fails."""
    module_name = f"bench.{name}"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name == module_name:
            raise SectionMissing(f"{module_name} does not exist yet, so {name} was not measured") from None
        raise
    return {"result": module.run(quick)}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    arguments = parse_arguments(argv)
    started_at = datetime.datetime.now(datetime.timezone.utc)
    started = time.monotonic()

    machine_at_start = machine()
    unavailable = {peer: reason for peer, reason in peers_available().items() if reason}
    for peer, reason in unavailable.items():
        print(f"bench: skipping {peer}: {reason}", flush=True)
    keys = [key for key in SUPERVISOR_KEYS if PEER_OF_KEY[key] not in unavailable]
    # startsecs changes only when supervisord calls a program RUNNING, not its status or idle cost.
    steady_keys = [key for key in keys if key != "supervisord-startsecs0"]

    workdir = Path(tempfile.mkdtemp(prefix="hermesd-bench-"))
    sections: dict[str, Any] = {}
    runners: dict[str, Callable[[], dict[str, Any]]] = {
        "startup": lambda: startup.run(arguments.quick, workdir, keys),
        "status": lambda: status.run(arguments.quick, workdir, steady_keys),
        "idle": lambda: idle.run(arguments.quick, workdir, steady_keys),
        "fds": lambda: fds.run(arguments.quick, workdir),
    }
    try:
        for name in arguments.sections:
            if name in runners:
                sections[name] = run_section(name, runners[name])
            else:
                sections[name] = run_section(name, lambda name=name: run_other(name, arguments.quick))
    finally:
        if arguments.keep:
            print(f"bench: kept the run's homes and logs in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    rows = report.build_rows(sections)
    results = {
        "date": started_at.isoformat(timespec="seconds"),
        "command": "python -m bench" + (" " + " ".join(argv) if argv else ""),
        "quick": arguments.quick,
        "machine": {**machine_at_start, "load_average_at_end": os.getloadavg()},
        "peers_skipped": unavailable,
        "duration_seconds": round(time.monotonic() - started, 1),
        "sections": sections,
        "rows": [row.as_dict() for row in rows],
    }
    table = report.text_table(rows)
    others = report.other_results(sections, [name for name in OTHER_SECTIONS if name in sections])

    arguments.results_dir.mkdir(parents=True, exist_ok=True)
    stem = started_at.strftime("%Y%m%dT%H%M%SZ") + ("-quick" if arguments.quick else "")
    json_path = arguments.results_dir / f"{stem}.json"
    table_path = arguments.results_dir / f"{stem}.md"
    json_path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    table_path.write_text(report.text_table(rows, markdown=True) + "\n\n" + others + "\n")

    print()
    print(table)
    if others:
        print()
        print(others)
    print(f"\nbench: {results['duration_seconds']:.0f} s; results in {json_path} and {table_path}")
    failed = [name for name, section in sections.items() if section.get("error")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
