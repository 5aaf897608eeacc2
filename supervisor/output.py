"""Text output of the CLI: the status table and log printing."""

from __future__ import annotations

import os
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any


def _format_uptime(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _format_exit(last_exit: dict[str, Any] | None) -> str:
    if not last_exit:
        return "-"
    if last_exit.get("signal"):
        return last_exit["signal"]
    if last_exit.get("error"):
        return "spawn failed"
    return f"exit {last_exit.get('code')}"


def _format_dispatch(entry: dict[str, Any]) -> str:
    value = entry.get("dispatch_in_gateway")
    if value is None:
        return "invalid"
    return f"{str(value).lower()} ({entry.get('dispatch_source')})"


def _format_boards(boards: dict[str, dict[str, int]]) -> list[str]:
    lines = []
    for slug, counts in sorted(boards.items()):
        parts = [f"{status} {counts.get(status, 0)}" for status in ("ready", "running", "blocked")]
        lines.append(f"  board {slug}: {', '.join(parts)}")
    return lines


def status_table(status: dict[str, Any]) -> str:
    supervisor = status["supervisor"]
    if supervisor.get("running") and supervisor.get("reachable") is False:
        header = (f"supervisor: running (pid {supervisor.get('pid')}) but not responding on its control socket; "
                  "states below are from its state file")
    elif supervisor.get("running"):
        header = f"supervisor: running (pid {supervisor.get('pid')})"
    else:
        header = "supervisor: not running"
        if supervisor.get("stale_state"):
            header += " (the state file is stale: the last supervisor did not exit cleanly)"
    lines = [f"home: {status['home']}", header]

    columns = ("PROFILE", "STATE", "PID", "ROLE", "DISPATCH", "UPTIME", "RESTARTS", "LAST EXIT", "LOG")
    rows = []
    for entry in status["profiles"]:
        rows.append((
            entry["name"],
            entry.get("state") or "unknown",
            str(entry.get("pid") or "-"),
            entry.get("role") or "none",
            _format_dispatch(entry),
            _format_uptime(entry.get("uptime")),
            str(entry.get("restarts") or 0),
            _format_exit(entry.get("last_exit")),
            entry.get("log") or "-",
        ))
    widths = [max(len(column), *(len(row[index]) for row in rows)) if rows else len(column)
              for index, column in enumerate(columns)]
    lines.append("  ".join(column.ljust(width) for column, width in zip(columns, widths)).rstrip())
    for row in rows:
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())

    for entry in status["profiles"]:
        if entry.get("error"):
            lines.append(f"{entry['name']}: {entry['error']}")
        if entry.get("role_error"):
            lines.append(f"{entry['name']}: {entry['role_error']}")
        if entry.get("role") == "leader" and entry.get("boards"):
            lines.append(f"{entry['name']} leads:")
            lines.extend(_format_boards(entry["boards"]))
        for slug, reason in (entry.get("skipped_boards") or {}).items():
            lines.append(f"{entry['name']}: board {slug} skipped: {reason}")
        pending = entry.get("pending_notifications")
        if pending:
            lines.append(f"{entry['name']}: {pending.get('count')} notification(s) pending: {pending.get('reason')}")

    lock = status["lock"]
    if lock.get("holder_pid") is None:
        lines.append(f"lock: free ({lock['path']})")
    else:
        owner = lock.get("holder_profile") or "not a hermesd gateway"
        lines.append(f"lock: held by pid {lock['holder_pid']} ({owner})")
    for warning in status.get("warnings") or []:
        lines.append(f"warning: {warning}")
    return "\n".join(lines)


def print_log(path: Path, lines: int, follow: bool) -> None:
    """Print the last `lines` lines of `path`; with `follow`, keep printing, reopening after rotation."""
    position = 0
    identity = None
    if path.exists():
        with open(path, "rb") as handle:
            for line in deque(handle, maxlen=max(lines, 0)):
                sys.stdout.write(line.decode(errors="replace"))
            position = handle.tell()
            status = os.fstat(handle.fileno())
            identity = (status.st_dev, status.st_ino)
    sys.stdout.flush()
    if not follow:
        return

    while True:
        try:
            status = os.stat(path)
        except FileNotFoundError:
            time.sleep(0.2)
            continue
        if (status.st_dev, status.st_ino) != identity or status.st_size < position:
            identity, position = (status.st_dev, status.st_ino), 0
        if status.st_size > position:
            with open(path, "rb") as handle:
                handle.seek(position)
                sys.stdout.write(handle.read().decode(errors="replace"))
                position = handle.tell()
            sys.stdout.flush()
        time.sleep(0.2)
