"""The leader runtime in-process: a service error does not end the leadership."""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path

import pytest

from gateway.leader import LeaderRuntime
from kanban.election import LeaderLock
from kanban.home import Home
from tests.helpers import wait_for


class FlakyService:
    """Fails its first passes with the error SQLite raises after its busy timeout, then works."""

    name = "flaky"

    def __init__(self, failures: int):
        self.failures = failures
        self.passes = 0

    def run_pass(self, boards: dict) -> None:
        self.passes += 1
        if self.passes <= self.failures:
            raise sqlite3.OperationalError("database is locked")

    def stop(self) -> None:
        pass


def test_service_error_keeps_leader_running(home: Path, caplog: pytest.LogCaptureFixture) -> None:
    lock = LeaderLock(Home.resolve(home).lock_path)
    assert lock.try_acquire()
    service = FlakyService(failures=3)
    runtime = LeaderRuntime(Home.resolve(home), "default", lock, lambda *args, **fields: None, [service])
    stop = threading.Event()
    errors = []

    def lead() -> None:
        try:
            runtime.run(stop)
        except BaseException as error:  # noqa: BLE001 - the test reports it
            errors.append(error)

    caplog.set_level(logging.ERROR, logger="gateway.leader")
    thread = threading.Thread(target=lead)
    thread.start()
    try:
        for _ in range(6):
            runtime.wake.set()
            wait_for(lambda: not runtime.wake.is_set(), message="a pass to start")
        wait_for(lambda: service.passes > 3, message="passes after the failures")
    finally:
        stop.set()
        runtime.wake.set()
        thread.join(10)
        runtime.shut_down()
        lock.release()

    assert errors == []
    failures = [record for record in caplog.records if "flaky pass failed" in record.getMessage()]
    assert len(failures) == 1
    assert failures[0].exc_info is not None
