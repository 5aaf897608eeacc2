"""What a gateway does while it holds the election lock: own every board and run the passes.

On taking over, the leader opens every live board, sets each board's owner epoch to one
more than the highest it finds (so a stale leader's writes are rejected), writes the owner
record, and logs each board with its task counts. Then it runs the leader services (the
dispatcher and the notifier) until it is told to stop, loses the lock file, or is fenced
out. A graceful stop stops the services first, closes the boards, and releases the lock last.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from kanban.election import LeaderLock, owner_record, read_owner_record, write_owner_record
from kanban.home import Home
from kanban.store import Board, BoardError, FencedOut

log = logging.getLogger(__name__)

# How often the leader checks the lock file and rescans the boards when nothing wakes it.
HOUSEKEEPING_SECONDS = 1.0
# Minimum seconds between two log lines for the same repeated service error.
SERVICE_ERROR_LOG_SECONDS = 60.0


class SteppedDown(Exception):
    """The leader can no longer lead (lock file replaced, or fenced out by a newer epoch)."""


class LeaderService(Protocol):
    """A job that only the leader runs, once per pass, over the open boards."""

    name: str

    def run_pass(self, boards: dict[str, Board]) -> None: ...

    def stop(self) -> None: ...


class LeaderRuntime:
    """The boards and services of a leader, from takeover to step-down."""

    def __init__(self, home: Home, profile: str, lock: LeaderLock, report: Callable[..., None],
                 services: list[LeaderService] | None = None):
        self.home = home
        self.profile = profile
        self.lock = lock
        self.report = report
        self.services = services or []
        self.boards: dict[str, Board] = {}
        self.skipped_boards: dict[str, str] = {}
        self.epoch = 0
        self.wake = threading.Event()
        self.service_errors: dict[tuple[str, str], tuple[float, int]] = {}
        self.last_board_report: dict[str, Any] | None = None
        self.last_pass_at = time.monotonic()

    # Takeover

    def take_over(self) -> None:
        started = time.monotonic()
        took_over_at = time.time()
        self.open_boards()
        boards_open_at = time.time()
        self.epoch = self._next_epoch()
        for board in list(self.boards.values()):
            self._take_ownership(board)
        record = owner_record(self.profile, self.epoch)
        record["took_over_at"] = took_over_at
        record["boards_open_at"] = boards_open_at
        write_owner_record(self.home.owner_record_path, record)

        elapsed_ms = (time.monotonic() - started) * 1000
        log.info("leader %s took over with epoch %d: %d board(s) open in %.1f ms",
                 self.profile, self.epoch, len(self.boards), elapsed_ms)
        for board in self.boards.values():
            log.info("opened board %s (%s): %s", board.slug, board.path, _format_counts(board.task_counts()))

    def open_boards(self) -> None:
        """Open every live board not yet open; a board that cannot be used is logged once and skipped."""
        for slug in self.home.board_slugs():
            if slug in self.boards:
                continue
            try:
                board = Board(slug, self.home.board_path(slug), check_pages=True)
            except BoardError as error:
                if self.skipped_boards.get(slug) != str(error):
                    log.error("skipping board %s: %s", slug, error)
                self.skipped_boards[slug] = str(error)
                continue
            self.skipped_boards.pop(slug, None)
            self.boards[slug] = board
            if self.epoch:
                self._take_ownership(board)
                log.info("opened new board %s (%s): %s", slug, board.path, _format_counts(board.task_counts()))

    def _next_epoch(self) -> int:
        highest = 0
        for board in self.boards.values():
            highest = max(highest, board.stored_epoch())
        record = read_owner_record(self.home.owner_record_path) or {}
        recorded = record.get("epoch")
        if isinstance(recorded, int):
            highest = max(highest, recorded)
        return highest + 1

    def _take_ownership(self, board: Board) -> None:
        try:
            board.take_ownership(self.epoch, self.profile)
        except FencedOut as error:
            raise SteppedDown(str(error)) from error

    # The loop

    def run(self, stop: threading.Event) -> None:
        """Run passes until `stop` is set; raise SteppedDown when leadership is lost."""
        self.take_over()
        self.report_boards()
        last_report = time.monotonic()

        while not stop.is_set():
            self.last_pass_at = time.monotonic()
            self.check_fencing()
            self.check_lock_file()
            self.open_boards()
            self.run_services()

            if time.monotonic() - last_report >= HOUSEKEEPING_SECONDS:
                self.report_boards()
                last_report = time.monotonic()

            self.wake.wait(HOUSEKEEPING_SECONDS)
            self.wake.clear()

    def pass_age(self) -> float:
        """Seconds since the leader loop last started a pass; grows without bound when the loop is stuck."""
        return time.monotonic() - self.last_pass_at

    def check_fencing(self) -> None:
        """Run an empty leader write on every board, so a leader that was frozen while another took
        over learns it from the epoch check before it writes anything."""
        for board in self.boards.values():
            try:
                with board.write():
                    pass
            except FencedOut as error:
                raise SteppedDown(str(error)) from error

    def check_lock_file(self) -> None:
        if not self.lock.still_names_held_file():
            raise SteppedDown(f"the lock file {self.lock.path} was removed or replaced; "
                              "this leader no longer holds the lock that others see")

    def run_services(self) -> None:
        """Run one pass of each service; an error other than fencing is logged and the next pass retries."""
        for service in self.services:
            try:
                service.run_pass(self.boards)
            except FencedOut as error:
                raise SteppedDown(str(error)) from error
            except Exception as error:  # noqa: BLE001 - one failed pass must not end the leadership
                self._log_service_error(service.name, error)

    def _log_service_error(self, name: str, error: Exception) -> None:
        """Log a service error with its traceback once, then at most once a minute with a repeat count."""
        key = (name, f"{type(error).__name__}: {error}")
        now = time.monotonic()
        last_logged, repeats = self.service_errors.get(key, (0.0, 0))
        if last_logged and now - last_logged < SERVICE_ERROR_LOG_SECONDS:
            self.service_errors[key] = (last_logged, repeats + 1)
            return
        if last_logged:
            log.error("%s pass failed again (%d more times): %s", name, repeats + 1, key[1])
        else:
            log.exception("%s pass failed; retrying on the next pass", name)
        self.service_errors[key] = (now, 0)

    def report_boards(self) -> None:
        """Send the task counts per board to the supervisor when they changed since the last report."""
        counts: dict[str, Any] = {}
        for slug, board in self.boards.items():
            try:
                counts[slug] = board.task_counts()
            except Exception as error:  # noqa: BLE001 - a broken board must not stop the report
                log.error("cannot count tasks on board %s: %s", slug, error)
        report = {"boards": counts, "skipped": dict(self.skipped_boards), "epoch": self.epoch}
        if report == self.last_board_report:
            return
        self.report("boards", **report)
        self.last_board_report = report

    # Step-down

    def shut_down(self) -> None:
        """Stop the services, then close the boards; the caller releases the lock afterwards."""
        for service in self.services:
            try:
                service.stop()
            except Exception:  # noqa: BLE001 - keep closing the rest
                log.exception("error stopping leader service %s", service.name)
        for board in self.boards.values():
            board.close()
        self.boards.clear()
        log.info("leader %s closed its boards", self.profile)


def _format_counts(counts: dict[str, int]) -> str:
    if not counts:
        return "no tasks"
    return ", ".join(f"{status}={count}" for status, count in sorted(counts.items()))
