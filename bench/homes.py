"""Temporary Hermes homes with N profiles and M boards for the benchmarks.

The default board is a copy of the real Hermes Agent 0.19 board in
`tests/fixtures/hermes-0.19-home`. The other boards are empty, with the same schema,
created by `kanban.store.create_board`. Every profile keeps Hermes's default
`kanban.dispatch_in_gateway: true`, so under every supervisor each gateway competes for
the election lock and one of them leads.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from kanban.home import Home
from kanban.store import create_board

FIXTURE_HOME = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "hermes-0.19-home"

ROOT_CONFIG = """\
kanban:
  dispatch_in_gateway: true
  dispatch_interval_seconds: 60
"""

PROFILE_CONFIG = """\
kanban:
  dispatch_in_gateway: true
"""


def profile_names(count: int) -> list[str]:
    """Return `default` followed by `profile-01`, `profile-02`, ... up to `count` names."""
    return ["default"] + [f"profile-{index:02d}" for index in range(1, count)]


def board_slugs(count: int) -> list[str]:
    """Return `default` followed by `board-001`, `board-002`, ... up to `count` slugs."""
    return ["default"] + [f"board-{index:03d}" for index in range(1, count)]


def make_home(root: Path, profiles: int, boards: int) -> Path:
    """Create a Hermes home at `root` with `profiles` profiles and `boards` boards; return `root`."""
    if profiles < 1 or boards < 1:
        raise ValueError(f"a home needs at least the default profile and board (got {profiles} profiles, "
                         f"{boards} boards)")
    root.mkdir(mode=0o700, parents=True)
    (root / "config.yaml").write_text(ROOT_CONFIG)
    for name in profile_names(profiles)[1:]:
        directory = root / "profiles" / name
        directory.mkdir(parents=True)
        (directory / "config.yaml").write_text(PROFILE_CONFIG)

    home = Home(root=root, kanban_root=root)
    (root / "kanban" / "boards").mkdir(parents=True)
    shutil.copyfile(FIXTURE_HOME / "kanban.db", home.board_path("default"))
    for slug in board_slugs(boards)[1:]:
        path = home.board_path(slug)
        create_board(path)
        board_json = {"slug": slug, "name": slug, "description": "", "icon": "", "color": "",
                      "default_workdir": None, "created_at": int(time.time()), "archived": False}
        (path.parent / "board.json").write_text(json.dumps(board_json, indent=2) + "\n")
    return root


def copy_home(source: Path, target: Path) -> Path:
    """Copy a home made by `make_home` (before any supervisor ran on it) to `target`."""
    shutil.copytree(source, target)
    return target
