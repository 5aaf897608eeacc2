"""End to end: `hermesd up`, `status` and `down` on a copy of a real Hermes 0.19 home."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil

from tests.helpers import Hermesd, board_file_holders, processes_of_home, set_dispatch, wait_for

NAMED_PROFILES = ["admin", "coder", "researcher", "writer"]


def profiles_by_name(status: dict) -> dict[str, dict]:
    return {entry["name"]: entry for entry in status["profiles"]}


def test_up_starts_every_profile_with_default_leading(hermesd: Hermesd, home: Path) -> None:
    hermesd.up_detached()
    status = hermesd.status()

    profiles = profiles_by_name(status)
    assert sorted(profiles) == sorted(["default", *NAMED_PROFILES])
    assert status["supervisor"]["running"] is True
    for name, entry in profiles.items():
        assert entry["state"] == "running", entry
        assert psutil.pid_exists(entry["pid"])
    assert profiles["default"]["role"] == "leader"
    assert profiles["default"]["dispatch_in_gateway"] is True
    assert profiles["default"]["dispatch_source"] == "default"
    for name in NAMED_PROFILES:
        assert profiles[name]["role"] == "off"
        assert profiles[name]["dispatch_in_gateway"] is False
        assert profiles[name]["dispatch_source"] == "config"
    assert status["lock"]["holder_pid"] == profiles["default"]["pid"]
    assert status["lock"]["holder_profile"] == "default"


def test_only_the_leader_has_board_files_open(hermesd: Hermesd, home: Path) -> None:
    hermesd.up_detached()
    leader_pid = hermesd.profile("default")["pid"]

    holders = wait_for(lambda: board_file_holders(home), message="the leader to open the boards")
    assert list(holders) == [leader_pid]
    opened = {Path(path) for path in holders[leader_pid]}
    assert home / "kanban.db" in opened
    assert home / "kanban" / "boards" / "newsletter" / "kanban.db" in opened


def test_leader_logs_each_board_with_counts(hermesd: Hermesd, home: Path) -> None:
    hermesd.up_detached()
    log_path = home / "hermesd" / "logs" / "default.log"

    text = wait_for(lambda: log_path.read_text() if "newsletter" in log_path.read_text() else "",
                    message="the leader's board log lines")
    assert f"opened board default ({home / 'kanban.db'}): blocked=1, ready=2, todo=1, triage=1" in text
    assert "opened board newsletter" in text
    assert "done=1, ready=1" in text
    boards = hermesd.profile("default")["boards"]
    assert boards["default"]["ready"] == 2
    assert boards["newsletter"]["done"] == 1


def test_only_writer_opens_no_board(hermesd: Hermesd, home: Path) -> None:
    hermesd.up_detached("--only", "writer")
    profiles = profiles_by_name(hermesd.status())

    assert profiles["writer"]["state"] == "running"
    assert profiles["writer"]["role"] == "off"
    for name in ["default", *NAMED_PROFILES]:
        if name != "writer":
            assert profiles[name]["state"] == "stopped", name
            assert profiles[name]["pid"] is None
    assert board_file_holders(home) == {}
    assert hermesd.status()["lock"]["holder_pid"] is None


def test_only_accepts_commas_and_repeats(hermesd: Hermesd) -> None:
    hermesd.up_detached("--only", "writer,coder", "--only", "admin")
    profiles = profiles_by_name(hermesd.status())

    running = sorted(name for name, entry in profiles.items() if entry["state"] == "running")
    assert running == ["admin", "coder", "writer"]


def test_standby_takes_over_after_leader_is_killed(hermesd: Hermesd, home: Path) -> None:
    set_dispatch(home, "coder", "true")
    hermesd.up_detached()
    profiles = profiles_by_name(hermesd.status())
    assert profiles["default"]["role"] == "leader"
    assert profiles["coder"]["role"] == "standby"
    old_leader = profiles["default"]["pid"]

    os.kill(old_leader, signal.SIGKILL)

    wait_for(lambda: hermesd.profile("coder")["role"] == "leader", message="coder to lead")
    new_leader = hermesd.profile("coder")["pid"]
    holders = wait_for(lambda: board_file_holders(home), message="the new leader to open the boards")
    assert list(holders) == [new_leader]
    assert hermesd.status()["lock"]["holder_pid"] == new_leader
    wait_for(lambda: hermesd.profile("default")["role"] == "standby", message="default back as standby")


def test_environment_turns_every_profile_off(hermesd: Hermesd, home: Path) -> None:
    hermesd.environ["HERMES_KANBAN_DISPATCH_IN_GATEWAY"] = "false"
    hermesd.up_detached()
    profiles = profiles_by_name(hermesd.status())

    for name, entry in profiles.items():
        assert entry["role"] == "off", name
        assert entry["dispatch_in_gateway"] is False
        assert entry["dispatch_source"] == "environment"
    assert board_file_holders(home) == {}


def test_env_file_turns_one_profile_off(hermesd: Hermesd, home: Path) -> None:
    set_dispatch(home, "coder", "true")
    (home / "profiles" / "coder" / ".env").write_text("HERMES_KANBAN_DISPATCH_IN_GATEWAY=false\n")
    (home / ".env").write_text("# nothing that changes dispatch\nTELEGRAM_BOT_TOKEN=123:secret\n")
    hermesd.up_detached()
    profiles = profiles_by_name(hermesd.status())

    assert profiles["coder"]["role"] == "off"
    assert profiles["coder"]["dispatch_source"] == "env_file"
    assert profiles["default"]["role"] == "leader"
    assert profiles["default"]["dispatch_source"] == "default"
    assert "123:secret" not in hermesd.run("status", "--json").stdout


def test_down_leaves_no_process(hermesd: Hermesd, home: Path) -> None:
    hermesd.up_detached()
    assert processes_of_home(home)

    result = hermesd.run("down")

    assert result.returncode == 0, result.stderr
    assert processes_of_home(home) == []
    status = hermesd.status()
    assert status["supervisor"]["running"] is False
    for entry in status["profiles"]:
        assert entry["state"] == "stopped"
        assert entry["pid"] is None
    assert hermesd.run("status").returncode == 3


def test_unknown_profile_in_only_is_rejected(hermesd: Hermesd, home: Path) -> None:
    result = hermesd.run("up", "--detach", "--only", "writer,ghost")

    assert result.returncode == 2
    assert "unknown profile 'ghost' in --only" in result.stderr
    assert "admin, coder" in result.stderr
    assert processes_of_home(home) == []


def test_invalid_yaml_stops_only_that_profile(hermesd: Hermesd, home: Path) -> None:
    config = home / "profiles" / "coder" / "config.yaml"
    config.write_text("kanban:\n  dispatch_in_gateway: [false\n")
    result = hermesd.run("up", "--detach")

    assert result.returncode == 1
    assert f"{config}: invalid YAML at line" in result.stderr
    profiles = profiles_by_name(hermesd.status())
    assert profiles["coder"]["state"] == "fatal"
    assert str(config) in profiles["coder"]["error"]
    for name in ["default", "admin", "researcher", "writer"]:
        assert profiles[name]["state"] == "running", name
    assert config.read_text() == "kanban:\n  dispatch_in_gateway: [false\n"


def test_invalid_dispatch_value_names_file_key_and_value(hermesd: Hermesd, home: Path) -> None:
    set_dispatch(home, "writer", "maybe")
    result = hermesd.run("up", "--detach")

    config = home / "profiles" / "writer" / "config.yaml"
    assert result.returncode == 1
    assert f"{config}: kanban.dispatch_in_gateway: invalid value 'maybe'" in result.stderr
    assert "use true or false" in result.stderr
    profiles = profiles_by_name(hermesd.status())
    assert profiles["writer"]["state"] == "fatal"
    assert profiles["writer"]["config_error"]["value"] == "maybe"
    assert profiles["default"]["role"] == "leader"


def test_status_on_missing_home_fails(hermesd: Hermesd, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    result = hermesd.run("--home", str(missing), "status")

    assert result.returncode == 4
    assert f"Hermes home not found: {missing}" in result.stderr
    assert not missing.exists()


def test_up_creates_minimal_home(hermesd: Hermesd, tmp_path: Path) -> None:
    fresh = tmp_path / "fresh-home"
    hermesd.home = fresh
    hermesd.environ["HERMES_HOME"] = str(fresh)
    hermesd.environ["HERMESD_TEST_HOME"] = str(fresh)

    hermesd.up_detached()

    assert (fresh / "config.yaml").is_file()
    assert (fresh / "kanban.db").is_file()
    profiles = profiles_by_name(hermesd.status())
    assert list(profiles) == ["default"]
    assert profiles["default"]["role"] == "leader"
    assert list(board_file_holders(fresh)) == [profiles["default"]["pid"]]


def test_broken_root_config_stops_only_default(hermesd: Hermesd, home: Path) -> None:
    (home / "config.yaml").write_text("kanban: {dispatch_interval_seconds: 60\n")
    result = hermesd.run("up", "--detach")

    assert result.returncode == 1
    assert f"{home / 'config.yaml'}: invalid YAML" in result.stderr
    profiles = profiles_by_name(hermesd.status())
    assert profiles["default"]["state"] == "fatal"
    for name in NAMED_PROFILES:
        assert profiles[name]["state"] == "running", name
    assert board_file_holders(home) == {}


def test_home_that_is_a_file_is_rejected(hermesd: Hermesd, tmp_path: Path) -> None:
    not_a_directory = tmp_path / "hermes-file"
    not_a_directory.write_text("just a file\n")

    result = hermesd.run("--home", str(not_a_directory), "up", "--detach")

    assert result.returncode == 4
    assert f"the Hermes home {not_a_directory} is not a directory" in result.stderr
    assert "Traceback" not in result.stderr
    assert not_a_directory.read_text() == "just a file\n"


def test_invalid_profile_directory_is_reported(hermesd: Hermesd, home: Path) -> None:
    (home / "profiles" / "Bad Name").mkdir()

    status = hermesd.status()

    assert "Bad Name" not in [entry["name"] for entry in status["profiles"]]
    assert any("Bad Name is not a valid profile name" in warning for warning in status["warnings"])


def test_concurrent_up_starts_both_selections(hermesd: Hermesd, home: Path) -> None:
    racers = [subprocess.Popen([sys.executable, "-m", "supervisor", "up", "--detach", "--only", name],
                               env=hermesd.environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
              for name in ("writer", "coder")]
    outputs = [racer.communicate(timeout=120) for racer in racers]

    for racer, (stdout, stderr) in zip(racers, outputs):
        assert racer.returncode == 0, stdout + stderr
    profiles = profiles_by_name(hermesd.status())
    assert profiles["writer"]["state"] == "running"
    assert profiles["coder"]["state"] == "running"
    supervisors = [process for process in processes_of_home(home) if "supervise" in process.cmdline()]
    assert len(supervisors) == 1


def test_cli_usage_errors_exit_two(hermesd: Hermesd, home: Path) -> None:
    hermesd.up_detached("--only", "writer")

    for arguments in (["stop", "nosuch"], ["restart", "nosuch"], ["start", "nosuch"], ["status", "nosuch"],
                      ["logs", "nosuch"], ["up", "--only", ""]):
        result = hermesd.run(*arguments)
        assert result.returncode == 2, (arguments, result.stderr)
        assert "Traceback" not in result.stderr
    assert "unknown profile 'nosuch' in `hermesd logs`" in hermesd.run("logs", "nosuch").stderr


def test_up_without_owner_warns(hermesd: Hermesd) -> None:
    result = hermesd.up_detached("--only", "writer")

    assert "no profile started here has dispatch_in_gateway true" in result.stderr


def test_non_utf8_argument_is_rejected(hermesd: Hermesd, home: Path) -> None:
    title = b"bad\xff\xfeutf".decode("utf-8", "surrogateescape")
    result = subprocess.run([sys.executable, "-c", "from supervisor.cli import main; main()", "kanban", "create",
                             title, "--triage"], env=hermesd.environ, capture_output=True)

    assert result.returncode == 2
    assert b"is not valid UTF-8" in result.stderr
    assert b"Traceback" not in result.stderr
