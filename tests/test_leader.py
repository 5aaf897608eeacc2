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


class StuckService:
    """Blocks its first pass until released, as a service stuck on a lock or a hung call would."""

    name = "stuck"

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def run_pass(self, boards: dict) -> None:
        self.entered.set()
        self.release.wait(30)

    def stop(self) -> None:
        self.release.set()


def test_pass_age_grows_while_stuck(home: Path) -> None:
    lock = LeaderLock(Home.resolve(home).lock_path)
    assert lock.try_acquire()
    service = StuckService()
    runtime = LeaderRuntime(Home.resolve(home), "default", lock, lambda *args, **fields: None, [service])
    stop = threading.Event()
    thread = threading.Thread(target=runtime.run, args=(stop,))
    thread.start()
    try:
        assert service.entered.wait(10)
        first_age = runtime.pass_age()
        wait_for(lambda: runtime.pass_age() > first_age + 0.5, message="the pass age to grow")
    finally:
        stop.set()
        service.release.set()
        thread.join(10)
        runtime.shut_down()
        lock.release()
