"""The leader's notifier on a copy of the real board, with a scripted gateway in place of the sockets."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import pytest

from kanban import notifier as notifier_module
from kanban.notifier import (DROPPED_EVENT_KIND, MAX_PERMANENT_FAILURES, REASON_GATEWAY_DOWN, REASON_PERMANENT,
                             Notifier, build_message, message_id)
from kanban.store import Board
from tests.helpers import wait_for
from tests.notify_helpers import CODER_TASK, WRITER_TASK, end_task, events, subscribe, subscriptions


class ScriptedGateways:
    """Record each message handed over and return the next scripted ack (default: delivered)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.answers: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def deliver(self, profile: str, message: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            self.calls.append((profile, message))
            if self.answers:
                return self.answers.pop(0)
        return {"ok": True, "id": message["id"], "duplicate": False}


class Leader:
    """One open board owned with epoch 1 and a notifier on it, run pass by pass."""

    def __init__(self, database: Path, gateways: ScriptedGateways):
        self.board = Board("default", database)
        self.board.take_ownership(1, "default")
        self.reports: list[dict[str, Any]] = []
        self.notifier = Notifier(gateways.deliver, lambda kind, **fields: self.reports.append({kind: fields}))

    def run_until(self, predicate, message: str) -> Any:
        def step() -> Any:
            self.notifier.run_pass({"default": self.board})
            return predicate()
        return wait_for(step, timeout=10, message=message)

    def close(self) -> None:
        self.notifier.stop()
        self.board.close()


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch):
    monkeypatch.setattr(notifier_module, "PERMANENT_RETRY_SECONDS", 0.05)
    monkeypatch.setattr(notifier_module, "GATEWAY_DOWN_RETRY_SECONDS", 0.05)


@pytest.fixture
def database(home: Path) -> Path:
    return home / "kanban.db"


@pytest.fixture
def gateways() -> ScriptedGateways:
    return ScriptedGateways()


@pytest.fixture
def leader(database, gateways):
    runner = Leader(database, gateways)
    yield runner
    runner.close()


def test_completion_goes_to_subscriber_profile(leader, gateways, database):
    event_id = end_task(database, WRITER_TASK, payload={"summary": "Draft is in drafts/weekly.md"})

    leader.run_until(lambda: subscriptions(database)[(WRITER_TASK, "telegram")] == event_id, "cursor to move")

    [(profile, message)] = gateways.calls
    assert profile == "writer"
    assert message["platform"] == "telegram"
    assert message["chat_id"] == "1001"
    assert message["task_id"] == WRITER_TASK
    assert message["text"] == ("Task t_bba04c75 completed: Draft the weekly newsletter\n"
                               "Draft is in drafts/weekly.md")


def test_cursor_waits_for_acknowledgement(leader, gateways, database):
    gateways.answers.append({"ok": False, "reason": REASON_GATEWAY_DOWN, "error": "gateway writer is not running"})
    event_id = end_task(database, WRITER_TASK)

    leader.run_until(lambda: leader.reports, "a pending report")
    assert subscriptions(database)[(WRITER_TASK, "telegram")] < event_id
    assert leader.reports[-1] == {"notifications": {"pending": {
        "writer": {"count": 1, "reason": "gateway writer is not running"}}}}

    leader.run_until(lambda: subscriptions(database)[(WRITER_TASK, "telegram")] == event_id, "cursor to move")
    leader.run_until(lambda: leader.reports[-1] == {"notifications": {"pending": {}}}, "pending to clear")
    assert len(gateways.calls) == 2
    assert gateways.calls[0][1]["id"] == gateways.calls[1][1]["id"]


def test_new_subscription_skips_history(leader, gateways, database):
    subscribe(database, "t_7ee9bed7", "slack", "C1", "admin")  # the task was blocked before this subscription

    leader.run_until(lambda: subscriptions(database)[("t_7ee9bed7", "slack")] > 0, "cursor to start")
    assert gateways.calls == []


def test_events_go_out_in_order(leader, gateways, database):
    blocked = end_task(database, CODER_TASK, "blocked", {"reason": "needs the staging password"}, status="blocked")
    unblocked = end_task(database, CODER_TASK, "unblocked", None, status="ready")

    leader.run_until(lambda: subscriptions(database)[(CODER_TASK, "discord")] == unblocked, "both events")
    assert [message["event_id"] for _profile, message in gateways.calls] == [blocked, unblocked]
    assert gateways.calls[0][1]["text"].endswith("blocked: Fix flaky login test\nneeds the staging password")


def test_archived_task_ends_subscription(leader, gateways, database):
    end_task(database, CODER_TASK, "archived", None, status="archived")

    leader.run_until(lambda: (CODER_TASK, "discord") not in subscriptions(database), "subscription to end")
    assert [message["kind"] for _profile, message in gateways.calls] == ["archived"]


def test_rejected_subscription_is_dropped(leader, gateways, database, caplog):
    rejection = {"ok": False, "reason": REASON_PERMANENT, "error": "telegram: HTTP 400: chat not found"}
    gateways.answers.extend([rejection] * MAX_PERMANENT_FAILURES)
    end_task(database, WRITER_TASK)

    with caplog.at_level(logging.WARNING, logger="kanban.notifier"):
        leader.run_until(lambda: (WRITER_TASK, "telegram") not in subscriptions(database), "the drop")

    assert len(gateways.calls) == MAX_PERMANENT_FAILURES
    [dropped] = events(database, WRITER_TASK, DROPPED_EVENT_KIND)
    assert dropped["payload"]["platform"] == "telegram"
    assert dropped["payload"]["failures"] == MAX_PERMANENT_FAILURES
    assert dropped["payload"]["error"] == "telegram: HTTP 400: chat not found"
    [warning] = [record.getMessage() for record in caplog.records if "dropped" in record.getMessage()]
    assert WRITER_TASK in warning
    assert "telegram" in warning


def test_no_subscriptions_logs_nothing_per_pass(database, gateways, caplog):
    runner = Leader(database, gateways)
    runner.board.connection.execute("DELETE FROM kanban_notify_subs")
    try:
        with caplog.at_level(logging.DEBUG):
            runner.notifier.run_pass({"default": runner.board})
            caplog.clear()
            for _ in range(20):
                runner.notifier.run_pass({"default": runner.board})
        assert caplog.records == []
        assert runner.reports == []
    finally:
        runner.close()


def test_message_ids_are_stable(leader, database):
    [subscription] = [sub for sub in leader.notifier._read_subscriptions("default", leader.board)
                      if sub.task_id == WRITER_TASK]
    first = build_message(subscription, 12, "completed", {}, 0, {"title": "Draft"})
    assert first["id"] == message_id(subscription, 12)
    assert message_id(subscription, 12) != message_id(subscription, 13)
    assert first["id"].startswith("default-12-")
