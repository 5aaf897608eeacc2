"""Creating a minimal Hermes home: the default profile and an empty default board."""

from __future__ import annotations

import logging

from kanban.home import DEFAULT_BOARD, Home
from kanban.store import create_board

log = logging.getLogger(__name__)

MINIMAL_CONFIG = """\
# Created by hermesd: the default profile of a new Hermes home.
kanban:
  dispatch_in_gateway: true
"""


def create_minimal_home(home: Home) -> None:
    """Create the root with `config.yaml` and an empty default board; existing files are left alone."""
    home.root.mkdir(mode=0o700, parents=True, exist_ok=True)
    config = home.root / "config.yaml"
    if not config.exists():
        config.write_text(MINIMAL_CONFIG, encoding="utf-8")
    (home.kanban_root / "kanban").mkdir(mode=0o700, parents=True, exist_ok=True)
    board = home.board_path(DEFAULT_BOARD)
    if not board.exists():
        create_board(board)
    log.info("created a minimal Hermes home at %s", home.root)
