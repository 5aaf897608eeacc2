"""The leader's notifier: turns new terminal task events into messages for the subscribers.

Subscriptions are the rows of `kanban_notify_subs` that Hermes Agent writes (`hermes
kanban notify-subscribe`). For each one, the terminal events of its task after its
cursor (`last_event_id`) become short messages, one at a time and in order. Each message
goes to the gateway of the subscription's `notifier_profile` (`default` when empty)
through the `deliver(profile, message)` callable the notifier is given. The cursor moves
in a fenced `Board.write()` transaction only after that gateway acknowledges.

Exactly once: a message's id is derived from the board, the event and the subscription,
so a message resent after a crash has the same id, and the gateway acknowledges it from
its delivered-ids file without sending it again.

Sends run in one thread per target profile, so a slow platform or a stopped gateway
delays only its own messages and never the leader's passes. All database work stays in
the leader's thread: the sender threads hand acknowledgements back and set the wake
event, and the next pass applies them. A new event is seen on the pass that follows
its commit, because the dispatcher's board watcher (kanban.watcher) sets the same wake
event on every change to a board.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from kanban.home import DEFAULT_PROFILE
from kanban.store import Board

log = logging.getLogger(__name__)

# Event kinds that are announced, with the word used in the message.
OUTCOMES = {
    "completed": "completed",
    "blocked": "blocked",
    "gave_up": "gave up",
    "crashed": "crashed",
    "timed_out": "timed out",
    "unblocked": "unblocked",
    "archived": "archived",
}
TERMINAL_KINDS = tuple(OUTCOMES)

# Why a message was not acknowledged; gateway.delivery responds with one of these.
REASON_GATEWAY_DOWN = "gateway_down"
REASON_NOT_CONFIGURED = "not_configured"
REASON_PERMANENT = "permanent"
REASON_TEMPORARY = "temporary"
REASON_INVALID = "invalid"

# A subscription is dropped after this many permanent failures in a row (the platform
# rejected the message, e.g. HTTP 400 or 403), with a task event and a warning. Hermes
# Agent's gateway notifier drops after 3 failed sends too. The tries are 1 s, then 2 s apart.
MAX_PERMANENT_FAILURES = 3
PERMANENT_RETRY_SECONDS = 1.0
# Retry delays for the failures that never drop a subscription.
GATEWAY_DOWN_RETRY_SECONDS = 1.0
NOT_CONFIGURED_RETRY_SECONDS = 2.0
TEMPORARY_RETRY_SECONDS = 2.0
MAX_RETRY_SECONDS = 60.0

DROPPED_EVENT_KIND = "notify_sub_dropped"

DETAIL_CHARS = 300
DETAIL_LINES = 3

# Test hook: seconds to wait between an acknowledgement and the cursor update.
PAUSE_BEFORE_CURSOR_VARIABLE = "HERMESD_TEST_PAUSE_BEFORE_CURSOR"

Ack = dict[str, Any]
Deliver = Callable[[str, dict[str, Any]], Ack]
Report = Callable[..., None]

_SUBSCRIPTION_WHERE = "task_id = ? AND platform = ? AND chat_id = ? AND thread_id = ?"


@dataclass(frozen=True)
class Subscription:
    """One row of `kanban_notify_subs` on one board."""

    board: str
    task_id: str
    platform: str
    chat_id: str
    thread_id: str
    profile: str
    cursor: int
    created_at: int

    @property
    def key(self) -> tuple[str, str, str, str, str]:
        return (self.board, self.task_id, self.platform, self.chat_id, self.thread_id)

    @property
    def row_key(self) -> tuple[str, str, str, str]:
        return (self.task_id, self.platform, self.chat_id, self.thread_id)

    def describe(self) -> str:
        thread = f" thread {self.thread_id}" if self.thread_id else ""
        return (f"task {self.task_id} on board {self.board} ({self.platform} chat {self.chat_id}{thread} "
                f"through profile {self.profile})")


@dataclass
class Outgoing:
    """The next message of one subscription, from its creation until it is acknowledged or dropped."""

    message_id: str
    subscription: Subscription
    event_id: int
    message: dict[str, Any]
    pending: int = 1
    due: float = 0.0
    in_flight: bool = False
    attempts: int = 0
    reason: str | None = None
    error: str | None = None
    first_failure: float | None = None


def message_id(subscription: Subscription, event_id: int) -> str:
    """Derive a message id that is the same for the same board, event and subscription."""
    digest = hashlib.sha256(json.dumps([*subscription.key, event_id]).encode()).hexdigest()[:16]
    return f"{subscription.board}-{event_id}-{digest}"


def _first_lines(text: Any) -> str:
    if text is None:
        return ""
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    detail = "\n".join(lines[:DETAIL_LINES])
    if len(detail) > DETAIL_CHARS:
        detail = detail[:DETAIL_CHARS - 1] + "…"
    return detail


def event_detail(kind: str, payload: dict[str, Any], task_result: str | None) -> str:
    """Pick the result or reason shown under a message's first line, from the fields Hermes Agent writes."""
    if kind == "completed":
        return _first_lines(payload.get("summary") or payload.get("result") or task_result)
    if kind == "blocked":
        return _first_lines(payload.get("reason"))
    if kind == "timed_out" and payload.get("limit_seconds"):
        return f"ran longer than its limit of {payload['limit_seconds']} s"
    if kind in ("gave_up", "crashed", "timed_out"):
        return _first_lines(payload.get("error") or payload.get("reason"))
    return ""


def build_message(subscription: Subscription, event_id: int, kind: str, payload: dict[str, Any],
                  created_at: int, task: Mapping[str, Any]) -> dict[str, Any]:
    title = str(task.get("title") or "(task not found)")
    outcome = OUTCOMES.get(kind, kind)
    detail = event_detail(kind, payload, task.get("result"))
    board = "" if subscription.board == DEFAULT_PROFILE else f" (board {subscription.board})"
    text = f"Task {subscription.task_id} {outcome}: {title}{board}"
    if detail:
        text += f"\n{detail}"
    return {
        "id": message_id(subscription, event_id),
        "board": subscription.board,
        "task_id": subscription.task_id,
        "event_id": event_id,
        "kind": kind,
        "outcome": outcome,
        "title": title,
        "detail": detail,
        "assignee": task.get("assignee"),
        "platform": subscription.platform.lower(),
        "chat_id": subscription.chat_id,
        "thread_id": subscription.thread_id,
        "event_created_at": created_at,
        "text": text,
    }


def _decode_payload(raw: Any) -> dict[str, Any]:
    if not raw:
        return {}
    try:
        payload = json.loads(raw)
    except (TypeError, ValueError):
        return {}
    return payload if isinstance(payload, dict) else {}


class Notifier:
    """The leader service named "notifier"."""

    name = "notifier"

    def __init__(self, deliver: Deliver, report: Report, wake: threading.Event | None = None,
                 environ: Mapping[str, str] | None = None):
        environ = os.environ if environ is None else environ
        self.deliver = deliver
        self.report = report
        self.wake = wake if wake is not None else threading.Event()
        self.pause_before_cursor = float(environ.get(PAUSE_BEFORE_CURSOR_VARIABLE) or 0)
        self._condition = threading.Condition()
        self._outbox: dict[tuple[str, ...], Outgoing] = {}
        self._results: list[tuple[Outgoing, Ack]] = []
        self._senders: dict[str, threading.Thread] = {}
        self._permanent_failures: dict[tuple[str, ...], int] = {}
        self._logged_failure: dict[tuple[str, ...], str] = {}
        self._reported_pending: dict[str, dict[str, Any]] = {}
        self._board_errors: dict[str, str] = {}
        self._stopping = False
        self._started = False

    # The pass

    def run_pass(self, boards: dict[str, Board]) -> None:
        if not self._started:
            self._started = True
            log.info("notifier started: watching %d board(s) for %s events", len(boards), ", ".join(TERMINAL_KINDS))
        self._apply_results(boards)
        self._scan(boards)
        self._report_pending()
        self._start_senders()

    def stop(self) -> None:
        with self._condition:
            self._stopping = True
            waiting = len(self._outbox)
            self._condition.notify_all()
        for thread in self._senders.values():
            thread.join(timeout=1.0)
        if self._started and waiting:
            log.info("notifier stopped with %d message(s) not yet acknowledged; the next leader sends them", waiting)
        elif self._started:
            log.info("notifier stopped")

    def _board_failed(self, slug: str, error: sqlite3.Error) -> None:
        """Log a board's database error once until it changes, so a locked or damaged board does not flood the log."""
        text = str(error)
        if self._board_errors.get(slug) != text:
            log.error("notifier cannot use board %s: %s; it tries again on the next pass", slug, text)
        self._board_errors[slug] = text

    def _board_recovered(self, slug: str) -> None:
        if self._board_errors.pop(slug, None) is not None:
            log.info("notifier can use board %s again", slug)

    # Reading the boards

    def _scan(self, boards: dict[str, Board]) -> None:
        seen: set[tuple[str, ...]] = set()
        failed: set[str] = set()
        for slug, board in boards.items():
            try:
                for subscription in self._read_subscriptions(slug, board):
                    seen.add(subscription.key)
                    self._scan_subscription(board, subscription)
            except sqlite3.Error as error:
                self._board_failed(slug, error)
                failed.add(slug)
                continue
            self._board_recovered(slug)

        with self._condition:
            # Messages of a board that could not be read stay: their subscriptions were not seen, not removed.
            removed = [key for key, outgoing in self._outbox.items()
                       if key not in seen and not outgoing.in_flight and key[0] not in failed]
            for key in removed:
                log.info("subscription of %s was removed; its waiting message is dropped",
                         self._outbox[key].subscription.describe())
                del self._outbox[key]

    def _read_subscriptions(self, slug: str, board: Board) -> list[Subscription]:
        rows = board.connection.execute(
            "SELECT task_id, platform, chat_id, thread_id, notifier_profile, last_event_id, created_at "
            "FROM kanban_notify_subs ORDER BY created_at, task_id").fetchall()
        return [
            Subscription(board=slug, task_id=task_id, platform=platform or "", chat_id=str(chat_id),
                         thread_id=thread_id or "", profile=profile or DEFAULT_PROFILE, cursor=int(cursor or 0),
                         created_at=int(created_at or 0))
            for task_id, platform, chat_id, thread_id, profile, cursor, created_at in rows
        ]

    def _scan_subscription(self, board: Board, subscription: Subscription) -> None:
        if subscription.cursor == 0:
            subscription = self._start_cursor(board, subscription)

        placeholders = ", ".join("?" for _ in TERMINAL_KINDS)
        events = board.connection.execute(
            f"SELECT id, kind, payload, created_at FROM task_events WHERE task_id = ? AND id > ? "
            f"AND kind IN ({placeholders}) ORDER BY id",
            (subscription.task_id, subscription.cursor, *TERMINAL_KINDS)).fetchall()

        if not events:
            if self._task_status(board, subscription.task_id) == "archived":
                self._end_subscription(board, subscription)
            return

        event_id, kind, payload, created_at = events[0]
        with self._condition:
            outgoing = self._outbox.get(subscription.key)
            if outgoing is not None and outgoing.event_id != event_id and not outgoing.in_flight:
                # The cursor moved without this notifier (another tool wrote it): start again from it.
                outgoing = None
            if outgoing is None:
                task = self._task(board, subscription.task_id)
                message = build_message(subscription, int(event_id), kind, _decode_payload(payload),
                                        int(created_at or 0), task)
                outgoing = Outgoing(message["id"], subscription, int(event_id), message)
                self._outbox[subscription.key] = outgoing
            outgoing.pending = len(events)

    def _start_cursor(self, board: Board, subscription: Subscription) -> Subscription:
        """Start a new subscription after the last event its task had when the subscription was made.

        Hermes Agent 0.19 inserts subscriptions with `last_event_id` 0, so the notifier sets
        it here to the task's latest event older than the subscription's `created_at`
        second. Events in that same second count as new: a repeat is better than a loss.
        """
        row = board.connection.execute(
            "SELECT COALESCE(MAX(id), 0) FROM task_events WHERE task_id = ? AND created_at < ?",
            (subscription.task_id, subscription.created_at)).fetchone()
        start = int(row[0])
        if start == 0:
            return subscription
        with board.write() as connection:
            connection.execute(
                f"UPDATE kanban_notify_subs SET last_event_id = ? WHERE {_SUBSCRIPTION_WHERE} AND last_event_id = 0",
                (start, *subscription.row_key))
        log.info("new subscription of %s starts after event %d", subscription.describe(), start)
        return Subscription(**{**subscription.__dict__, "cursor": start})

    @staticmethod
    def _task(board: Board, task_id: str) -> dict[str, Any]:
        row = board.connection.execute("SELECT title, assignee, result, status FROM tasks WHERE id = ?",
                                       (task_id,)).fetchone()
        if row is None:
            return {}
        return dict(zip(("title", "assignee", "result", "status"), row))

    def _task_status(self, board: Board, task_id: str) -> str | None:
        return self._task(board, task_id).get("status")

    # Acknowledgements

    def _apply_results(self, boards: dict[str, Board]) -> None:
        with self._condition:
            results, self._results = self._results, []
        for outgoing, ack in results:
            board = boards.get(outgoing.subscription.board)
            if board is None:
                with self._condition:
                    outgoing.in_flight = False
                continue
            try:
                if ack.get("ok"):
                    self._acknowledged(board, outgoing, ack)
                else:
                    self._failed(board, outgoing, ack)
            except sqlite3.Error as error:
                # The message is sent again later; the gateway acknowledges the repeat without sending it.
                self._board_failed(outgoing.subscription.board, error)
                with self._condition:
                    outgoing.in_flight = False
                    outgoing.due = time.monotonic() + TEMPORARY_RETRY_SECONDS

    def _acknowledged(self, board: Board, outgoing: Outgoing, ack: Ack) -> None:
        subscription = outgoing.subscription
        if self.pause_before_cursor:
            log.warning("test hook %s: waiting %g s before moving the cursor for message %s",
                        PAUSE_BEFORE_CURSOR_VARIABLE, self.pause_before_cursor, outgoing.message_id)
            time.sleep(self.pause_before_cursor)
        with board.write() as connection:
            connection.execute(
                f"UPDATE kanban_notify_subs SET last_event_id = ? WHERE {_SUBSCRIPTION_WHERE} AND last_event_id < ?",
                (outgoing.event_id, *subscription.row_key, outgoing.event_id))

        with self._condition:
            outgoing.in_flight = False
            if self._outbox.get(subscription.key) is outgoing:
                del self._outbox[subscription.key]
        self._permanent_failures.pop(subscription.key, None)
        duplicate = " (the gateway had already sent it)" if ack.get("duplicate") else ""
        if self._logged_failure.pop(subscription.key, None) is not None:
            waited = time.monotonic() - (outgoing.first_failure or time.monotonic())
            log.info("delivered message %s (%s of %s) after %d tries over %.1f s%s", outgoing.message_id,
                     outgoing.message["kind"], subscription.describe(), outgoing.attempts, waited, duplicate)
        else:
            log.info("delivered message %s (%s of %s)%s", outgoing.message_id, outgoing.message["kind"],
                     subscription.describe(), duplicate)

    def _failed(self, board: Board, outgoing: Outgoing, ack: Ack) -> None:
        subscription = outgoing.subscription
        reason = str(ack.get("reason") or REASON_TEMPORARY)
        error = str(ack.get("error") or "no error given")
        now = time.monotonic()

        if reason in (REASON_PERMANENT, REASON_INVALID):
            failures = self._permanent_failures.get(subscription.key, 0) + 1
            self._permanent_failures[subscription.key] = failures
            if failures >= MAX_PERMANENT_FAILURES:
                self._drop_subscription(board, outgoing, error, failures)
                return
            delay = PERMANENT_RETRY_SECONDS * 2 ** (failures - 1)
            log.warning("message %s for %s was rejected (%d of %d permanent failures): %s", outgoing.message_id,
                        subscription.describe(), failures, MAX_PERMANENT_FAILURES, error)
        else:
            if reason == REASON_GATEWAY_DOWN:
                delay = GATEWAY_DOWN_RETRY_SECONDS
            elif reason == REASON_NOT_CONFIGURED:
                delay = NOT_CONFIGURED_RETRY_SECONDS
            else:
                delay = min(TEMPORARY_RETRY_SECONDS * 2 ** min(outgoing.attempts - 1, 10), MAX_RETRY_SECONDS)
                retry_after = ack.get("retry_after")
                if isinstance(retry_after, (int, float)):
                    delay = max(delay, float(retry_after))
            if self._logged_failure.get(subscription.key) != error:
                log.warning("cannot deliver message %s for %s: %s; retrying every %g s until it is delivered",
                            outgoing.message_id, subscription.describe(), error, delay)

        self._logged_failure[subscription.key] = error
        with self._condition:
            outgoing.in_flight = False
            outgoing.reason = reason
            outgoing.error = error
            outgoing.due = now + delay
            if outgoing.first_failure is None:
                outgoing.first_failure = now

    def _drop_subscription(self, board: Board, outgoing: Outgoing, error: str, failures: int) -> None:
        subscription = outgoing.subscription
        payload = {
            "platform": subscription.platform,
            "chat_id": subscription.chat_id,
            "thread_id": subscription.thread_id,
            "notifier_profile": subscription.profile,
            "event_id": outgoing.event_id,
            "failures": failures,
            "error": error,
        }
        with board.write() as connection:
            connection.execute(f"DELETE FROM kanban_notify_subs WHERE {_SUBSCRIPTION_WHERE}", subscription.row_key)
            connection.execute(
                "INSERT INTO task_events (task_id, run_id, kind, payload, created_at) VALUES (?, NULL, ?, ?, ?)",
                (subscription.task_id, DROPPED_EVENT_KIND, json.dumps(payload), int(time.time())))
        log.warning("dropped the subscription of %s on platform %s after %d permanent failures in a row; "
                    "last error: %s", subscription.describe(), subscription.platform, failures, error)
        self._forget(outgoing)

    def _end_subscription(self, board: Board, subscription: Subscription) -> None:
        with board.write() as connection:
            connection.execute(f"DELETE FROM kanban_notify_subs WHERE {_SUBSCRIPTION_WHERE}", subscription.row_key)
        log.info("subscription of %s ended: the task is archived", subscription.describe())

    def _forget(self, outgoing: Outgoing) -> None:
        key = outgoing.subscription.key
        with self._condition:
            outgoing.in_flight = False
            if self._outbox.get(key) is outgoing:
                del self._outbox[key]
        self._permanent_failures.pop(key, None)
        self._logged_failure.pop(key, None)

    # Status

    def _report_pending(self) -> None:
        """Send the supervisor the count of waiting messages per target profile whose last try failed."""
        pending: dict[str, dict[str, Any]] = {}
        with self._condition:
            for outgoing in self._outbox.values():
                if outgoing.reason is None:
                    continue
                entry = pending.setdefault(outgoing.subscription.profile, {"count": 0, "reasons": []})
                entry["count"] += outgoing.pending
                if outgoing.error not in entry["reasons"]:
                    entry["reasons"].append(outgoing.error)
        for entry in pending.values():
            reasons = entry.pop("reasons")
            entry["reason"] = "; ".join(reasons[:2]) + (f" (and {len(reasons) - 2} more)" if len(reasons) > 2 else "")
        if pending != self._reported_pending:
            self._reported_pending = pending
            self.report("notifications", pending=pending)

    # Sending

    def _start_senders(self) -> None:
        with self._condition:
            profiles = {outgoing.subscription.profile for outgoing in self._outbox.values()}
            for profile in profiles - set(self._senders):
                thread = threading.Thread(target=self._send_loop, args=(profile,), name=f"notify-{profile}",
                                          daemon=True)
                self._senders[profile] = thread
                thread.start()
            self._condition.notify_all()

    def _next_due(self, profile: str, now: float) -> tuple[Outgoing | None, float]:
        """Return the message for `profile` to send now, or None and the seconds until one is due."""
        wait = 1.0
        candidates = sorted((outgoing for outgoing in self._outbox.values()
                             if outgoing.subscription.profile == profile and not outgoing.in_flight),
                            key=lambda outgoing: (outgoing.due, outgoing.event_id))
        for outgoing in candidates:
            if outgoing.due <= now:
                return outgoing, 0.0
            wait = min(wait, outgoing.due - now)
        return None, wait

    def _send_loop(self, profile: str) -> None:
        while True:
            with self._condition:
                if self._stopping:
                    return
                outgoing, wait = self._next_due(profile, time.monotonic())
                if outgoing is None:
                    self._condition.wait(wait)
                    continue
                outgoing.in_flight = True
                outgoing.attempts += 1

            try:
                ack = self.deliver(profile, outgoing.message)
            except Exception as error:  # noqa: BLE001 - a failed try is retried, never fatal
                log.exception("delivering message %s to gateway %s failed", outgoing.message_id, profile)
                ack = {"ok": False, "reason": REASON_TEMPORARY, "error": f"delivery failed: {error!r}"}

            with self._condition:
                self._results.append((outgoing, ack))
            self.wake.set()
