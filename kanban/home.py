"""Layout of a Hermes Agent home on disk (compatible with Hermes Agent 0.19).

The root holds the `default` profile (`config.yaml`, `.env`) and the default board
(`kanban.db`). Named profiles live in `profiles/<name>/`, other boards in
`kanban/boards/<slug>/kanban.db`. `HERMES_KANBAN_HOME` moves the boards and the
election lock to another root without moving the profiles.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
DEFAULT_PROFILE = "default"
DEFAULT_BOARD = "default"
ARCHIVED_BOARDS_DIR = "_archived"


class HomeError(Exception):
    """Raised when the home or a name in it cannot be used; the message says how to fix it."""


def is_valid_name(name: str) -> bool:
    return NAME_PATTERN.fullmatch(name) is not None


def validate_name(name: str, kind: str) -> str:
    """Return `name` unchanged, or raise HomeError when it is not a valid profile or board name."""
    if not is_valid_name(name):
        raise HomeError(
            f"invalid {kind} name {name!r}: use 1 to 64 characters of a-z, 0-9, '_' and '-', "
            "starting with a letter or digit"
        )
    return name


def _strip_profile_suffix(path: Path) -> Path:
    # HERMES_HOME may point at a profile directory (<root>/profiles/<name>); the root is two levels up.
    if path.parent.name == "profiles" and is_valid_name(path.name):
        return path.parent.parent
    return path


@dataclass(frozen=True)
class Home:
    """Paths of one Hermes home: its root, and the root that holds the boards and the lock."""

    root: Path
    kanban_root: Path

    @classmethod
    def resolve(cls, home: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None) -> Home:
        """Find the home from `--home`, then `HERMES_HOME`, then `~/.hermes`."""
        if environ is None:
            environ = os.environ

        if home is not None:
            root = Path(home).expanduser()
        elif environ.get("HERMES_HOME"):
            root = Path(environ["HERMES_HOME"]).expanduser()
        else:
            root = Path.home() / ".hermes"
        root = _strip_profile_suffix(root.absolute())

        kanban_root = root
        if environ.get("HERMES_KANBAN_HOME"):
            kanban_root = Path(environ["HERMES_KANBAN_HOME"]).expanduser().absolute()

        return cls(root=root, kanban_root=kanban_root)

    def exists(self) -> bool:
        return self.root.is_dir()

    # Profiles

    @property
    def profiles_dir(self) -> Path:
        return self.root / "profiles"

    def profile_dir(self, name: str) -> Path:
        if name == DEFAULT_PROFILE:
            return self.root
        return self.profiles_dir / name

    def profile_names(self) -> list[str]:
        """List `default` and every valid profile directory, sorted after `default`."""
        names = [DEFAULT_PROFILE]
        if self.profiles_dir.is_dir():
            for entry in sorted(self.profiles_dir.iterdir()):
                if entry.is_dir() and is_valid_name(entry.name) and entry.name != DEFAULT_PROFILE:
                    names.append(entry.name)
        return names

    def invalid_profile_dirs(self) -> list[Path]:
        """Directories under `profiles/` whose names are not valid profile names."""
        if not self.profiles_dir.is_dir():
            return []
        return [
            entry
            for entry in sorted(self.profiles_dir.iterdir())
            if entry.is_dir() and not is_valid_name(entry.name)
        ]

    # Boards

    @property
    def boards_dir(self) -> Path:
        return self.kanban_root / "kanban" / "boards"

    def board_path(self, slug: str) -> Path:
        if slug == DEFAULT_BOARD:
            return self.kanban_root / "kanban.db"
        return self.boards_dir / slug / "kanban.db"

    def board_slugs(self) -> list[str]:
        """List the live boards: `default` when its database exists, then every board directory."""
        slugs = []
        if self.board_path(DEFAULT_BOARD).is_file():
            slugs.append(DEFAULT_BOARD)
        if self.boards_dir.is_dir():
            for entry in sorted(self.boards_dir.iterdir()):
                if entry.name == ARCHIVED_BOARDS_DIR or not is_valid_name(entry.name):
                    continue
                if (entry / "kanban.db").is_file():
                    slugs.append(entry.name)
        return slugs

    def board_files(self) -> list[Path]:
        """List every database file of every board: `kanban.db` and its `-wal` and `-shm` companions."""
        files = []
        for slug in self.board_slugs():
            database = self.board_path(slug)
            files.extend([database, Path(f"{database}-wal"), Path(f"{database}-shm")])
        return files

    # Election

    @property
    def lock_path(self) -> Path:
        return self.kanban_root / "kanban" / ".dispatcher.lock"

    @property
    def owner_record_path(self) -> Path:
        return self.kanban_root / "kanban" / ".dispatcher.owner.json"
