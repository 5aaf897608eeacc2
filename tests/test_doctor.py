"""`hermesd doctor`, and corrupt boards: reported, skipped by the leader, never rewritten."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from tests.helpers import Hermesd, board_file_holders, wait_for


def test_doctor_passes_on_healthy_home(hermesd: Hermesd) -> None:
    hermesd.up_detached()

    result = hermesd.run("doctor")

    assert result.returncode == 0, result.stdout
    assert "no problems found" in result.stdout
    assert "the election lock is held by pid" in result.stdout


def test_doctor_reports_no_owner(hermesd: Hermesd) -> None:
    hermesd.environ["HERMES_KANBAN_DISPATCH_IN_GATEWAY"] = "false"

    result = hermesd.run("doctor")

    assert result.returncode == 1
    assert "no profile has dispatch_in_gateway true" in result.stdout


def test_doctor_reports_second_board_holder(hermesd: Hermesd, home: Path) -> None:
    hermesd.up_detached()
    wait_for(lambda: board_file_holders(home), message="the leader to open the boards")
    intruder = sqlite3.connect(home / "kanban.db")
    try:
        intruder.execute("SELECT count(*) FROM tasks").fetchone()
        result = hermesd.run("doctor")
    finally:
        intruder.close()

    assert result.returncode == 1
    assert "2 processes have board files open" in result.stdout
    assert f"pid {os.getpid()}" in result.stdout


def test_doctor_reports_open_permissions(hermesd: Hermesd, home: Path) -> None:
    hermesd.up_detached("--only", "writer")
    os.chmod(home / "hermesd", 0o755)

    result = hermesd.run("doctor")

    assert result.returncode == 1
    assert f"{home / 'hermesd'} is readable by other accounts. Fix: chmod 700" in result.stdout


def test_corrupt_board_is_skipped_and_kept(hermesd: Hermesd, home: Path) -> None:
    board = home / "kanban" / "boards" / "newsletter" / "kanban.db"
    garbage = b"this is not a database\n" * 100
    board.write_bytes(garbage)

    hermesd.up_detached()

    leader = wait_for(lambda: (entry := hermesd.profile("default"))["skipped_boards"] and entry,
                      message="the corrupt board to be reported")
    assert "newsletter" in leader["skipped_boards"]
    assert "default" in leader["boards"]
    assert "board newsletter skipped" in hermesd.run("status").stdout
    doctor = hermesd.run("doctor")
    assert doctor.returncode == 1
    assert "board newsletter" in doctor.stdout
    assert "is not an SQLite database" in doctor.stdout
    hermesd.run("down")
    assert board.read_bytes() == garbage


def test_doctor_reports_board_corrupted_in_place(hermesd: Hermesd, home: Path) -> None:
    board = home / "kanban" / "boards" / "newsletter" / "kanban.db"
    data = bytearray(board.read_bytes())
    data[4096:8192] = os.urandom(4096)  # keep the SQLite header, damage the pages
    board.write_bytes(bytes(data))
    hermesd.up_detached()
    wait_for(lambda: hermesd.profile("default")["skipped_boards"] or hermesd.profile("default")["boards"],
             message="the leader to open its boards")

    result = hermesd.run("doctor")

    assert result.returncode == 1
    assert "board newsletter is skipped by the leader default" in result.stdout
    assert "database disk image" in result.stdout


def test_doctor_warnings_are_not_ok(hermesd: Hermesd, home: Path) -> None:
    (home / "profiles" / "My Bot").mkdir()
    (home / "profiles" / "writer" / "config.yaml").write_text(
        "kanban:\n  dispatch_in_gateway: false\n  max_in_progress: 9\n")

    result = hermesd.run("doctor")

    assert result.returncode == 1
    assert "warning: " in result.stdout
    assert "My Bot is not a valid profile name" in result.stdout
    assert "ok: " + str(home / "profiles" / "My Bot") not in result.stdout
    assert "kanban.max_in_progress is ignored" in result.stdout
