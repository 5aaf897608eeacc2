"""The `local` platform: appends each message as a JSON line to a file in the profile's home."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gateway.adapters.base import Settings

FILE_NAME = "hermesd-notifications.jsonl"


class LocalAdapter:
    platform = "local"

    def __init__(self, settings: Settings):
        self.path = settings.directory / FILE_NAME

    def send(self, message: dict[str, Any]) -> dict[str, Any]:
        line = json.dumps({**message, "delivered_at": time.time()}, ensure_ascii=False) + "\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        return {"path": str(self.path)}


def build(settings: Settings, secrets: Sequence[str] = ()) -> LocalAdapter:
    return LocalAdapter(settings)


def local_file(directory: Path) -> Path:
    return directory / FILE_NAME
