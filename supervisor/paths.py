"""Where hermesd keeps its own state: `<root>/hermesd/` (mode 0700)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from kanban.home import Home

DIRECTORY_MODE = 0o700
FILE_MODE = 0o600


@dataclass(frozen=True)
class StatePaths:
    """The supervisor lock, control socket, state file, logs and gateway sockets of one home."""

    home: Home

    @property
    def directory(self) -> Path:
        return self.home.root / "hermesd"

    @property
    def supervisor_lock(self) -> Path:
        return self.directory / "supervisor.lock"

    @property
    def control_socket(self) -> Path:
        return self.directory / "control.sock"

    @property
    def state_file(self) -> Path:
        return self.directory / "state.json"

    @property
    def logs_dir(self) -> Path:
        return self.directory / "logs"

    @property
    def supervisor_log(self) -> Path:
        return self.logs_dir / "supervisor.log"

    @property
    def run_dir(self) -> Path:
        """Directory of the gateways' delivery sockets."""
        return self.directory / "run"

    def gateway_log(self, profile: str) -> Path:
        return self.logs_dir / f"{profile}.log"

    def create(self) -> None:
        """Create the state directories with mode 0700 and tighten them if they already exist."""
        for directory in (self.directory, self.logs_dir, self.run_dir):
            directory.mkdir(mode=DIRECTORY_MODE, parents=True, exist_ok=True)
            os.chmod(directory, DIRECTORY_MODE)
