"""`hermesd doctor`: check a home for what keeps the election and the boards from working.

Every finding is a problem (with a fix), a warning, or a note ("ok:"). Exit status 0
means no problem and no warning was found; otherwise it is 1.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import psutil
import typer

from kanban.election import lock_holders, network_filesystem, read_owner_record
from kanban.home import Home
from kanban.profiles import load_profiles, parse_bool, read_config_file, ConfigError
from supervisor.paths import StatePaths
from supervisor.status import build_status

SQLITE_HEADER = b"SQLite format 3\x00"


@dataclass
class Report:
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def problem(self, text: str) -> None:
        self.problems.append(text)

    def warning(self, text: str) -> None:
        self.warnings.append(text)

    def note(self, text: str) -> None:
        self.notes.append(text)


def processes_with_open_files(files: list[Path]) -> dict[int, list[str]]:
    """Map pid to the given files it has open, read from every process's open files."""
    wanted = {str(path) for path in files}
    wanted |= {os.path.realpath(path) for path in files}
    holders: dict[int, list[str]] = {}
    for process in psutil.process_iter(["pid"]):
        try:
            opened = [item.path for item in process.open_files() if item.path in wanted]
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        if opened:
            holders[process.pid] = sorted(set(opened))
    return holders


def _describe_process(pid: int) -> str:
    try:
        process = psutil.Process(pid)
        return f"pid {pid} ({' '.join(process.cmdline())[:120]})"
    except psutil.Error:
        return f"pid {pid}"


def check_profiles(home: Home, report: Report) -> list[str]:
    candidates = []
    for profile in load_profiles(home):
        if profile.error is not None:
            report.problem(f"profile {profile.name} cannot start: {profile.error.describe()}")
            continue
        if profile.dispatch_in_gateway:
            candidates.append(profile.name)

    if not candidates:
        report.problem("no profile has dispatch_in_gateway true, so no gateway dispatches the boards. "
                       "Fix: set kanban.dispatch_in_gateway: true in one profile's config.yaml")
    elif len(candidates) == 1:
        report.note(f"one kanban owner configured: {candidates[0]}")
    else:
        report.note(f"{len(candidates)} candidates for the kanban lock: {', '.join(candidates)}; whichever holds "
                    "the lock leads and the others stand by to take over when it dies. To make one owner "
                    "explicit, set kanban.dispatch_in_gateway: false in the config.yaml of all but that profile")
    return candidates


def check_lock(home: Home, report: Report, gateway_pids: dict[int, str], candidates: list[str]) -> None:
    path = home.lock_path
    if path.is_symlink():
        report.problem(f"{path} is a symlink; hermesd never follows it, so no hermesd gateway can lead. "
                       f"Fix: rm {path}")
        return
    if path.exists():
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            report.problem(f"{path} has mode {mode:o}; other accounts can lock it and block the election. "
                           f"Fix: chmod 600 {path}")

    holders = lock_holders(path)
    if not holders:
        if candidates and gateway_pids:
            report.problem("nobody holds the election lock although candidates run; see `hermesd logs` of "
                           f"{', '.join(candidates)}")
        else:
            report.note(f"the election lock {path} is free")
        return

    pid = holders[0].pid
    profile = gateway_pids.get(pid)
    if profile is None:
        record = read_owner_record(home.owner_record_path) or {}
        if record.get("pid") == pid:
            profile = record.get("profile")
    if profile is not None:
        report.note(f"the election lock is held by pid {pid}, the hermesd gateway of {profile}")
    else:
        report.problem(f"the election lock {path} is held by {_describe_process(pid)}, which is not a hermesd "
                       "gateway (a Hermes gateway takes the same lock); hermesd candidates stand by until it "
                       "exits. Fix: stop that process, or set kanban.dispatch_in_gateway: false for it")


def check_open_boards(home: Home, report: Report, gateway_pids: dict[int, str]) -> None:
    holders = processes_with_open_files(home.board_files())
    if len(holders) > 1:
        names = ", ".join(f"{_describe_process(pid)}" for pid in holders)
        report.problem(f"{len(holders)} processes have board files open: {names}. Only the leader should; "
                       "stop the other gateways or set kanban.dispatch_in_gateway: false for them")
    elif holders:
        pid = next(iter(holders))
        report.note(f"board files are open in one process: pid {pid} ({gateway_pids.get(pid, 'not hermesd')})")


def check_boards(home: Home, report: Report) -> None:
    for slug in home.board_slugs():
        path = home.board_path(slug)
        try:
            with open(path, "rb") as handle:
                header = handle.read(len(SQLITE_HEADER))
        except OSError as error:
            report.problem(f"board {slug}: cannot read {path}: {error.strerror}")
            continue
        if header != SQLITE_HEADER:
            report.problem(f"board {slug}: {path} is not an SQLite database; hermesd skips it and never rewrites "
                           "it. Fix: restore it from a backup or move it away")


def check_filesystem(home: Home, report: Report) -> None:
    kind = network_filesystem(home.kanban_root)
    if kind is None:
        return
    allowed = False
    try:
        allowed = parse_bool((read_config_file(home.root / "config.yaml").get("kanban") or {})
                             .get("allow_network_filesystem")) is True
    except ConfigError:
        pass
    if allowed:
        report.note(f"{home.kanban_root} is on a network filesystem ({kind}); allowed by "
                    "kanban.allow_network_filesystem")
    else:
        report.problem(f"{home.kanban_root} is on a network filesystem ({kind}); file locks there are unreliable "
                       "and candidates refuse to lead. Fix: move the home to a local disk, or set "
                       "kanban.allow_network_filesystem: true")


def check_permissions(home: Home, report: Report) -> None:
    paths = StatePaths(home)
    if not paths.directory.exists():
        return
    for path in [paths.directory, paths.logs_dir, paths.run_dir]:
        if path.exists() and stat.S_IMODE(path.stat().st_mode) & 0o077:
            report.problem(f"{path} is readable by other accounts. Fix: chmod 700 {path}")
    for path in [paths.state_file, paths.control_socket]:
        if path.exists() and stat.S_IMODE(path.stat().st_mode) & 0o077:
            report.problem(f"{path} is accessible to other accounts. Fix: chmod 600 {path}")
    for profile in load_profiles(home):
        if profile.env_path.exists() and stat.S_IMODE(profile.env_path.stat().st_mode) & 0o077:
            report.problem(f"{profile.env_path} may hold secrets and is readable by other accounts. "
                           f"Fix: chmod 600 {profile.env_path}")


def run_checks(home: Home) -> Report:
    report = Report()
    status = build_status(home)
    gateway_pids = {entry["pid"]: entry["name"] for entry in status["profiles"] if entry.get("pid")}

    candidates = check_profiles(home, report)
    check_lock(home, report, gateway_pids, candidates)
    check_open_boards(home, report, gateway_pids)
    check_boards(home, report)
    check_filesystem(home, report)
    check_permissions(home, report)
    for warning in status["warnings"]:
        if "standing by" not in warning and "symlink" not in warning:
            report.warning(warning)
    for entry in status["profiles"]:
        for slug, reason in (entry.get("skipped_boards") or {}).items():
            report.problem(f"board {slug} is skipped by the leader {entry['name']}: {reason}")
    standbys = [entry["name"] for entry in status["profiles"] if entry.get("role") == "standby"]
    if standbys:
        report.note(f"standing by: {', '.join(standbys)}")
    return report


def register(app: typer.Typer) -> None:
    @app.command()
    def doctor(context: typer.Context,
               quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print problems only.")] = False) -> None:
        """Check the home: owners, lock holder, open board files, filesystem and permissions."""
        home = context.obj.home
        if not home.exists():
            typer.echo(f"problem: Hermes home not found: {home.root}. Fix: check --home or HERMES_HOME", err=True)
            raise typer.Exit(4)
        report = run_checks(home)
        if not quiet:
            for note in report.notes:
                typer.echo(f"ok: {note}")
        for warning in report.warnings:
            typer.echo(f"warning: {warning}")
        for problem in report.problems:
            typer.echo(f"problem: {problem}")
        if report.problems or report.warnings:
            typer.echo(f"{len(report.problems)} problem(s) and {len(report.warnings)} warning(s) found")
            raise typer.Exit(1)
        typer.echo("no problems found")
