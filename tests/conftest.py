"""Shared fixtures: a temporary copy of a real Hermes home and a `hermesd` runner for it."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import FIXTURE_HOME, Hermesd


@pytest.fixture
def sandbox(tmp_path: Path) -> Path:
    path = tmp_path / "user-home"
    path.mkdir()
    return path


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A fresh copy of the real Hermes 0.19 home."""
    target = tmp_path / "hermes"
    shutil.copytree(FIXTURE_HOME, target)
    for path in [target, *target.rglob("*")]:
        path.chmod(path.stat().st_mode | 0o200)
    return target


@pytest.fixture
def hermesd(home: Path, sandbox: Path) -> Iterator[Hermesd]:
    runner = Hermesd(home, sandbox)
    yield runner
    runner.cleanup()
