"""Small JSON files written atomically: state, owner records, worker pid and exit files.

A reader sees either the old file or the new one, never half of one: the data goes to a
temporary file in the same directory, is fsynced, and is renamed over the target.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_json_atomically(path: Path, data: dict[str, Any], mode: int = 0o600) -> None:
    """Replace `path` with `data` as JSON; the file is created with `mode` and never followed as a symlink."""
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    try:
        os.write(fd, json.dumps(data, sort_keys=True, default=str).encode() + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, path)


def read_json_object(path: Path) -> dict[str, Any] | None:
    """Read a JSON object; None when the file is missing, unreadable, not JSON, or not an object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
