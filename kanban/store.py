"""SQLite access to one board database, with the owner epoch that fences out stale leaders.

Connections use WAL and a busy timeout, and every write runs in `BEGIN IMMEDIATE`, as
Hermes Agent does, so hermesd and `hermes kanban` can share a board. A leader writes
through `Board.write()`, which checks inside the transaction that the board's owner epoch
is still the leader's own; a leader that lost the election gets `FencedOut` instead of
writing.
"""

from __future__ import annotations

import logging
import os
import socket
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from kanban.schema import HERMES_SCHEMA, HERMESD_SCHEMA

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 5000

TASK_STATUSES = ("triage", "todo", "scheduled", "ready", "running", "blocked", "review", "done", "archived")


class BoardError(Exception):
    """A board database that cannot be used (missing, unreadable, corrupt, or not a Hermes board)."""


class FencedOut(Exception):
    """Raised inside a write when the board's owner epoch is newer than the writer's."""

    def __init__(self, path: Path, own_epoch: int, board_epoch: int):
        self.path = path
        self.own_epoch = own_epoch
        self.board_epoch = board_epoch
        super().__init__(
            f"{path}: owner epoch is {board_epoch}, newer than this leader's {own_epoch}; "
            "another leader took over, so this one must stop writing"
        )


def connect(path: Path, create: bool = False) -> sqlite3.Connection:
    """Open a board database in autocommit mode with WAL and a busy timeout."""
    if not create and not path.is_file():
        raise BoardError(f"{path}: board database not found")
    try:
        connection = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                                     check_same_thread=False)
    except sqlite3.Error as error:
        raise BoardError(f"{path}: cannot open board database: {error}") from error

    try:
        connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        connection.execute("PRAGMA journal_mode = WAL")
        connection.execute("PRAGMA foreign_keys = OFF")
    except sqlite3.Error as error:
        connection.close()
        raise BoardError(f"{path}: not a usable SQLite database ({error}); leave it for inspection "
                         "or restore it from a backup") from error
    return connection


def create_board(path: Path) -> None:
    """Create an empty board with Hermes Agent's schema; an existing database is left as it is."""
    path.parent.mkdir(parents=True, exist_ok=True)
    connection = connect(path, create=True)
    try:
        connection.executescript(HERMES_SCHEMA)
    finally:
        connection.close()


class Board:
    """One open board database, held by the leader for as long as it leads."""

    def __init__(self, slug: str, path: Path, check_pages: bool = False):
        """Open the board; with `check_pages`, also read every page once (the leader does, on takeover)."""
        self.slug = slug
        self.path = path
        self.epoch = 0
        self.connection = connect(path)
        try:
            self._check_hermes_tables()
            if check_pages:
                self._check_pages()
            self.connection.executescript(HERMESD_SCHEMA)
        except (sqlite3.Error, BoardError) as error:
            self.connection.close()
            if isinstance(error, BoardError):
                raise
            raise BoardError(f"{path}: corrupt or unreadable board ({error}); it is left untouched, "
                             "restore it from a backup or move it away") from error

    def _check_hermes_tables(self) -> None:
        rows = self.connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
        names = {row[0] for row in rows}
        missing = {"tasks", "task_events", "task_runs", "task_links"} - names
        if missing:
            raise BoardError(f"{self.path}: not a Hermes kanban board (missing tables: {', '.join(sorted(missing))}); "
                             "it is left untouched")
        self.connection.execute("SELECT count(*) FROM tasks").fetchone()

    def _check_pages(self) -> None:
        # quick_check reads every page once (it skips the index-content checks of integrity_check),
        # which catches damage that a single query would miss. Short CLI commands skip it.
        result = self.connection.execute("PRAGMA quick_check(1)").fetchone()[0]
        if result != "ok":
            raise BoardError(f"{self.path}: database disk image is damaged ({result}); it is left untouched, "
                             "restore it from a backup or move it away")

    def close(self) -> None:
        self.connection.close()

    # Reads

    def task_counts(self) -> dict[str, int]:
        rows = self.connection.execute("SELECT status, count(*) FROM tasks GROUP BY status").fetchall()
        return {status: count for status, count in rows}

    def stored_epoch(self) -> int:
        row = self.connection.execute("SELECT epoch FROM hermesd_owner WHERE id = 1").fetchone()
        return 0 if row is None else int(row[0])

    def data_version(self) -> int:
        """SQLite's counter that changes whenever another connection commits to this database."""
        return int(self.connection.execute("PRAGMA data_version").fetchone()[0])

    # Writes

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """Run a write transaction (`BEGIN IMMEDIATE`) without the epoch check."""
        self.connection.execute("BEGIN IMMEDIATE")
        try:
            yield self.connection
        except BaseException:
            self.connection.execute("ROLLBACK")
            raise
        self.connection.execute("COMMIT")

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """Run a leader's write transaction; raise FencedOut if another leader owns the board now."""
        with self.transaction() as connection:
            board_epoch = self.stored_epoch()
            if board_epoch != self.epoch:
                raise FencedOut(self.path, self.epoch, board_epoch)
            yield connection

    def take_ownership(self, epoch: int, profile: str) -> None:
        """Record `epoch` as the board's owner epoch; raise FencedOut if the board already has a newer one."""
        with self.transaction() as connection:
            board_epoch = self.stored_epoch()
            if board_epoch >= epoch:
                raise FencedOut(self.path, epoch, board_epoch)
            connection.execute(
                "INSERT INTO hermesd_owner (id, epoch, profile, pid, host, since) VALUES (1, ?, ?, ?, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET epoch = excluded.epoch, profile = excluded.profile, "
                "pid = excluded.pid, host = excluded.host, since = excluded.since",
                (epoch, profile, os.getpid(), socket.gethostname(), int(time.time())),
            )
        self.epoch = epoch
