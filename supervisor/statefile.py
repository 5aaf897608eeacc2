"""The state file `<root>/hermesd/state.json`: what the supervisor last knew, for `status` without it."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_state(path: Path, state: dict[str, Any]) -> None:
    """Write the state atomically with mode 0600."""
    temporary = path.with_name(f"{path.name}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, json.dumps(state, indent=1, sort_keys=True, default=str).encode())
    finally:
        os.close(fd)
    os.replace(temporary, path)


def read_state(path: Path) -> dict[str, Any] | None:
    """Read the state file; None when it is missing or unreadable (a crash mid-write cannot leave half a file)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
