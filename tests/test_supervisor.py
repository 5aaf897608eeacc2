"""Supervisor faults: parent death, restart policy, stop/start, leftovers, stale state, reload, logs, systemd."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from supervisor.control import request
from tests.helpers import Hermesd, processes_of_home, set_dispatch, wait_for

pytestmark = pytest.mark.chaos

FAST_RESTARTS = """\
kanban:
  dispatch_interval_seconds: 60
hermesd:
  backoff_initial: 0.2
  backoff_max: 5
  max_failures: 5
  stop_timeout: 5
"""


def gateway_pids(home: Path) -> dict[str, int]:
    pids = {}
    for process in processes_of_home(home):
        cmdline = process.cmdline()
        if "gateway" in cmdline and "--profile" in cmdline:
            pids[cmdline[cmdline.index("--profile") + 1]] = process.pid
    return pids


def is_alive(process: psutil.Process) -> bool:
    """True while the process runs; an exited process that nobody has reaped yet (a zombie) is not alive."""
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def write_script(path: Path, body: str) -> str:
    """Write a Python script that stands in for a gateway; return a command for HERMESD_GATEWAY_COMMAND_*."""
    path.write_text(body)
    return f"{sys.executable} {path}"


# A gateway that misbehaves first, then runs the real gateway with the arguments it was given.
EXEC_REAL_GATEWAY = """
os.execv(sys.executable, [sys.executable, "-m", "gateway", *sys.argv[1:]])
"""


def states(hermesd: Hermesd) -> dict[str, str]:
    return {entry["name"]: entry["state"] for entry in hermesd.status()["profiles"]}


def test_killed_supervisor_takes_every_gateway_with_it(hermesd: Hermesd, home: Path) -> None:
    hermesd.up_detached()
    supervisor = hermesd.supervisor_pid()
    gateways = [psutil.Process(pid) for pid in gateway_pids(home).values()]
    assert len(gateways) == 5

    os.kill(supervisor, signal.SIGKILL)
    killed_at = time.monotonic()

    alive = gateways
    while alive and time.monotonic() - killed_at < 1.0:
        alive = [process for process in alive if is_alive(process)]
        time.sleep(0.01)
    assert alive == [], f"gateways still alive {time.monotonic() - killed_at:.2f} s after the kill"
    status = hermesd.status()
    assert status["supervisor"]["running"] is False
    assert status["supervisor"]["stale_state"] is True
    assert all(entry["state"] == "stopped" for entry in status["profiles"])

    hermesd.up_detached()
    status = hermesd.status()
    assert all(entry["state"] == "running" for entry in status["profiles"])
    assert [entry["name"] for entry in status["profiles"] if entry["role"] == "leader"] == ["default"]


def test_command_that_cannot_start_backs_off_then_is_fatal(hermesd: Hermesd, home: Path) -> None:
    (home / "config.yaml").write_text(FAST_RESTARTS)
    hermesd.environ["HERMESD_GATEWAY_COMMAND_WRITER"] = "/nonexistent/python3"
    hermesd.run("up", "--detach")
    supervisor = psutil.Process(hermesd.supervisor_pid())
    control = home / "hermesd" / "control.sock"
    cpu_before = sum(supervisor.cpu_times()[:2])
    watched_from = time.monotonic()

    answers = 0
    while True:
        response = request(control, "status", timeout=1.0)
        answers += 1
        current = {entry["name"]: entry["state"] for entry in response["status"]["profiles"]}
        assert current["default"] == "running"
        if current["writer"] == "fatal":
            break
        assert time.monotonic() - watched_from < 60, "writer never became fatal"
        time.sleep(0.05)
    cpu_used = sum(supervisor.cpu_times()[:2]) - cpu_before
    elapsed = time.monotonic() - watched_from

    assert answers > 3
    assert cpu_used < 0.5 * elapsed, f"supervisor used {cpu_used:.2f} CPU s in {elapsed:.2f} s"
    log = (home / "hermesd" / "logs" / "supervisor.log").read_text()
    delays = [float(value) for value in re.findall(r"gateway writer will restart in ([0-9.]+) s", log)]
    assert len(delays) == 4
    assert delays == sorted(delays)
    assert delays[-1] > 2 * delays[0]
    assert "/nonexistent/python3" in log
    assert "it stays fatal until `hermesd restart writer`" in log
    writer = hermesd.profile("writer")
    assert writer["failures"] == 5
    assert "cannot start" in writer["error"]
    assert {name: state for name, state in states(hermesd).items() if name != "writer"} == {
        "default": "running", "admin": "running", "coder": "running", "researcher": "running"}


def test_stop_during_backoff_keeps_gateway_stopped(hermesd: Hermesd, home: Path, tmp_path: Path) -> None:
    (home / "config.yaml").write_text(FAST_RESTARTS.replace("backoff_initial: 0.2", "backoff_initial: 1.5"))
    broken = tmp_path / "writer-broken"
    broken.touch()
    command = write_script(tmp_path / "flaky.py", textwrap.dedent(f"""
        import os, sys
        if os.path.exists({str(broken)!r}):
            sys.exit(3)
    """) + EXEC_REAL_GATEWAY)
    hermesd.environ["HERMESD_GATEWAY_COMMAND_WRITER"] = command
    hermesd.run("up", "--detach")
    wait_for(lambda: states(hermesd)["writer"] == "backoff", message="writer in backoff")

    assert hermesd.run("stop", "writer").returncode == 0
    time.sleep(3.0)  # longer than the backoff delay
    assert states(hermesd)["writer"] == "stopped"

    broken.unlink()
    assert hermesd.run("restart", "writer").returncode == 0
    wait_for(lambda: states(hermesd)["writer"] == "running", message="writer running again")
    assert hermesd.profile("writer")["failures"] == 0


def test_double_forked_grandchild_is_stopped_by_down(hermesd: Hermesd, home: Path, tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    command = write_script(tmp_path / "forker.py", textwrap.dedent(f"""
        import os, sys, time
        if not os.path.exists({str(pid_file)!r}):
            if os.fork() == 0:
                os.setsid()
                if os.fork() == 0:
                    with open({str(pid_file)!r} + ".tmp", "w") as handle:
                        handle.write(str(os.getpid()))
                    os.rename({str(pid_file)!r} + ".tmp", {str(pid_file)!r})
                    time.sleep(600)
                os._exit(0)
            while not os.path.exists({str(pid_file)!r}):
                time.sleep(0.01)
            sys.exit(1)
    """) + EXEC_REAL_GATEWAY)
    hermesd.environ["HERMESD_GATEWAY_COMMAND_WRITER"] = command
    hermesd.run("up", "--detach")
    wait_for(lambda: pid_file.exists(), message="the grandchild to start")
    grandchild = psutil.Process(int(pid_file.read_text()))
    assert grandchild.is_running()
    wait_for(lambda: states(hermesd)["writer"] == "running", message="writer restarted")

    assert hermesd.run("down").returncode == 0

    assert not is_alive(grandchild)
    assert processes_of_home(home) == []


def test_stale_state_with_reused_pids_is_not_running(hermesd: Hermesd, home: Path) -> None:
    unrelated = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        state_dir = home / "hermesd"
        state_dir.mkdir(mode=0o700)
        stale = {
            "supervisor": {"running": True, "pid": unrelated.pid, "start_time": 1000.0},
            "profiles": [{"name": "default", "state": "running", "pid": unrelated.pid, "pid_start_time": 1000.0,
                          "role": "leader", "dispatch_in_gateway": True, "dispatch_source": "default"}],
        }
        (state_dir / "state.json").write_text(json.dumps(stale))

        status = hermesd.status()

        assert status["supervisor"]["running"] is False
        assert status["supervisor"]["stale_state"] is True
        default = next(entry for entry in status["profiles"] if entry["name"] == "default")
        assert default["state"] == "stopped"
        assert default["pid"] is None
        assert default["stale"] is True
        assert hermesd.run("status").returncode == 3
        assert "no supervisor is running" in hermesd.run("down").stdout
        assert unrelated.poll() is None
    finally:
        unrelated.kill()
        unrelated.wait()


def test_reload_touches_only_what_changed(hermesd: Hermesd, home: Path) -> None:
    hermesd.up_detached()
    before = {entry["name"]: entry["pid"] for entry in hermesd.status()["profiles"]}

    (home / "profiles" / "editor").mkdir()
    set_dispatch(home, "editor", "false")
    (home / "profiles" / "admin" / "config.yaml").unlink()
    (home / "profiles" / "admin").rmdir()
    (home / "profiles" / "coder" / ".env").write_text("SLACK_BOT_TOKEN=xoxb-test\n")
    result = hermesd.run("reload")
    assert result.returncode == 0, result.stderr
    assert "added: editor" in result.stdout
    assert "removed: admin" in result.stdout
    assert "changed: coder" in result.stdout

    wait_for(lambda: states(hermesd).get("editor") == "running" and "admin" not in states(hermesd)
             and hermesd.profile("coder")["pid"] not in (None, before["coder"]), message="reload to settle")
    after = {entry["name"]: entry["pid"] for entry in hermesd.status()["profiles"]}
    for name in ("default", "researcher", "writer"):
        assert after[name] == before[name], name
    assert psutil.pid_exists(after["editor"])
    assert "admin" not in gateway_pids(home)


def test_sighup_reloads(hermesd: Hermesd, home: Path) -> None:
    hermesd.up_detached("--only", "writer")
    writer_pid = hermesd.profile("writer")["pid"]
    (home / "profiles" / "writer" / "config.yaml").write_text("kanban:\n  dispatch_in_gateway: no\n")

    os.kill(hermesd.supervisor_pid(), signal.SIGHUP)

    wait_for(lambda: hermesd.profile("writer")["pid"] not in (None, writer_pid), message="writer restarted")
    assert states(hermesd)["default"] == "stopped"


def test_fifty_megabytes_of_output_stay_within_rotation(hermesd: Hermesd, home: Path, tmp_path: Path) -> None:
    (home / "config.yaml").write_text("hermesd:\n  log_max_bytes: 1000000\n  log_backups: 3\n")
    command = write_script(tmp_path / "chatty.py", textwrap.dedent("""
        import os, sys
        line = b"x" * 1023 + b"\\n"
        for _ in range(50 * 1024):
            os.write(1, line)
    """) + EXEC_REAL_GATEWAY)
    hermesd.environ["HERMESD_GATEWAY_COMMAND_WRITER"] = command
    hermesd.up_detached("--only", "writer")
    logs = home / "hermesd" / "logs"
    wait_for(lambda: "gateway writer started" in (logs / "writer.log").read_text(), timeout=60,
             message="the real gateway's first line after 50 MB")

    files = sorted(path.name for path in logs.glob("writer.log*"))
    assert files == ["writer.log", "writer.log.1", "writer.log.2", "writer.log.3"]
    total = sum(path.stat().st_size for path in logs.glob("writer.log*"))
    assert total <= 1000000 * 4
    assert total > 3 * 1000000 * 0.9


def test_deleted_log_is_recreated_and_shown(hermesd: Hermesd, home: Path) -> None:
    hermesd.up_detached("--only", "writer")
    log_path = home / "hermesd" / "logs" / "writer.log"
    log_path.unlink()

    hermesd.run("restart", "writer")

    wait_for(lambda: log_path.exists() and "gateway writer started" in log_path.read_text(),
             message="the log to be recreated")
    result = hermesd.run("logs", "writer", "-n", "1")
    assert result.returncode == 0
    assert len(result.stdout.splitlines()) == 1
    follower = subprocess.Popen([sys.executable, "-m", "supervisor", "logs", "writer", "-f", "-n", "0"],
                                env=hermesd.environ, stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.5)
        hermesd.run("restart", "writer")
        line = follower.stdout.readline()
        assert "writer" in line
    finally:
        follower.kill()
        follower.wait()


def test_gateway_that_never_gets_ready_is_a_failed_start(hermesd: Hermesd, home: Path, tmp_path: Path) -> None:
    (home / "config.yaml").write_text("hermesd:\n  start_timeout: 1\n  backoff_initial: 30\n")
    command = write_script(tmp_path / "silent.py", "import time\ntime.sleep(600)\n")
    hermesd.environ["HERMESD_GATEWAY_COMMAND_WRITER"] = command
    hermesd.run("up", "--detach", "--only", "writer")

    writer = wait_for(lambda: (entry := hermesd.profile("writer"))["state"] == "backoff" and entry,
                      message="writer in backoff")
    assert writer["failures"] == 1
    assert writer["error"] == "not ready within 1 s"
    assert writer["last_exit"]["signal"] == "SIGTERM"


def test_long_home_path_control_socket(hermesd: Hermesd, home: Path, tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60) / "hermes"
    deep.parent.mkdir(parents=True)
    home.rename(deep)
    hermesd.home = deep
    hermesd.environ["HERMES_HOME"] = str(deep)
    hermesd.environ["HERMESD_TEST_HOME"] = str(deep)
    assert len(str(deep / "hermesd" / "control.sock")) > 108

    hermesd.up_detached("--only", "writer")

    assert states(hermesd)["writer"] == "running"
    assert hermesd.run("stop", "writer").returncode == 0
    assert states(hermesd)["writer"] in ("stopping", "stopped")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to connect as another uid")
def test_control_socket_rejects_other_uid(hermesd: Hermesd, home: Path) -> None:
    hermesd.up_detached("--only", "writer")
    control = home / "hermesd" / "control.sock"
    assert oct(control.stat().st_mode & 0o777) == "0o600"
    os.chmod(home / "hermesd", 0o755)
    os.chmod(control, 0o666)
    # The temporary directories above the home are private to root; reach the socket through
    # a directory descriptor opened before dropping privileges.
    directory_fd = os.open(home / "hermesd", os.O_RDONLY | os.O_DIRECTORY)

    pid = os.fork()
    if pid == 0:
        try:
            os.setuid(65534)
            client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            client.connect(f"/proc/self/fd/{directory_fd}/control.sock")
            try:
                client.sendall(b'{"command": "down"}\n')
            except BrokenPipeError:
                pass  # the server may reject and close before reading the request
            answer = client.recv(4096)
            os._exit(0 if b"permission denied" in answer else 1)
        except BaseException as error:  # noqa: BLE001 - report any failure through the exit status
            os.write(2, f"connecting as uid 65534 failed: {error!r}\n".encode())
            os._exit(2)
    _pid, status = os.waitpid(pid, 0)
    os.close(directory_fd)

    assert os.waitstatus_to_exitcode(status) == 0
    assert hermesd.status()["supervisor"]["running"] is True


def test_systemd_notify_ready_and_watchdog(hermesd: Hermesd, home: Path, tmp_path: Path) -> None:
    address = tmp_path / "notify.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(address))
    listener.settimeout(30)
    environ = dict(hermesd.environ, NOTIFY_SOCKET=str(address), WATCHDOG_USEC="200000")
    supervisor = subprocess.Popen([sys.executable, "-m", "supervisor", "up", "--only", "writer,coder"],
                                  env=environ, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        messages = []
        while not any("READY=1" in message for message in messages):
            messages.append(listener.recv(4096).decode())
        ready = next(message for message in messages if "READY=1" in message)
        assert "STATUS=2 running" in ready
        watchdogs = 0
        while watchdogs < 3:
            if listener.recv(4096).decode() == "WATCHDOG=1":
                watchdogs += 1

        supervisor.send_signal(signal.SIGTERM)
        while "STOPPING=1" not in listener.recv(4096).decode():
            pass
        assert supervisor.wait(timeout=30) == 0
    finally:
        supervisor.kill()
        supervisor.wait()
        listener.close()


@pytest.mark.slow
def test_status_keeps_answering_during_crash_loop(hermesd: Hermesd, home: Path, tmp_path: Path) -> None:
    (home / "config.yaml").write_text("hermesd:\n  backoff_initial: 0.01\n  backoff_max: 0.05\n"
                                      "  max_failures: 1000000\n")
    command = write_script(tmp_path / "crasher.py", "import time, sys\ntime.sleep(0.1)\nsys.exit(1)\n")
    hermesd.environ["HERMESD_GATEWAY_COMMAND_WRITER"] = command
    hermesd.run("up", "--detach")
    supervisor = psutil.Process(hermesd.supervisor_pid())

    for index in range(50):
        result = hermesd.run("status", "--json")
        assert result.returncode == 3, result.stderr
        assert json.loads(result.stdout)["supervisor"]["running"] is True
        if index == 25:
            assert hermesd.run("restart", "default", "admin", "coder", "researcher", "writer").returncode == 0

    assert supervisor.is_running()
    assert hermesd.profile("writer")["restarts"] > 10
    wait_for(lambda: all(state == "running" for name, state in states(hermesd).items() if name != "writer"),
             message="the other gateways running after the restart")
    zombies = [child for child in supervisor.children() if child.status() == psutil.STATUS_ZOMBIE]
    assert len(zombies) <= 1


def test_frozen_leader_is_killed_and_replaced(hermesd: Hermesd, home: Path) -> None:
    (home / "config.yaml").write_text("hermesd:\n  hang_timeout: 2\n  backoff_initial: 0.2\n")
    set_dispatch(home, "coder", "true")
    hermesd.up_detached()
    frozen = hermesd.profile("default")["pid"]
    frozen_process = psutil.Process(frozen)

    os.kill(frozen, signal.SIGSTOP)
    try:
        wait_for(lambda: hermesd.profile("coder")["role"] == "leader", timeout=30, message="coder to take over")
    finally:
        if is_alive(frozen_process):
            os.kill(frozen, signal.SIGCONT)

    assert not is_alive(frozen_process)
    wait_for(lambda: hermesd.profile("default")["role"] == "standby", message="default back as standby")
    default = hermesd.profile("default")
    assert default["last_exit"]["signal"] == "SIGKILL"
    assert default["restarts"] >= 1
    log = (home / "hermesd" / "logs" / "supervisor.log").read_text()
    assert re.search(r"gateway default \(pid \d+\) sent nothing for [0-9.]+ s \(hang_timeout 2 s\); killing it", log)


@pytest.mark.parametrize("content", [
    '{"profiles": 5}',
    '{"profiles": [{"name": "default"}]}',
    '{"supervisor": "x", "profiles": [{"name": "default", "state": 3, "pid": "12", "last_exit": "boom"}]}',
    '[1, 2]',
    'not json at all',
])
def test_damaged_state_file_is_ignored(hermesd: Hermesd, home: Path, content: str) -> None:
    (home / "hermesd").mkdir(mode=0o700)
    (home / "hermesd" / "state.json").write_text(content)

    table = hermesd.run("status")
    as_json = hermesd.run("status", "--json")

    assert table.returncode == 3, table.stderr
    assert "Traceback" not in table.stderr
    assert as_json.returncode == 3, as_json.stderr
    states = {entry["name"]: entry["state"] for entry in json.loads(as_json.stdout)["profiles"]}
    assert states["default"] == "stopped"


def test_status_of_unresponsive_supervisor(hermesd: Hermesd, home: Path) -> None:
    hermesd.up_detached("--only", "writer")
    supervisor = hermesd.supervisor_pid()

    os.kill(supervisor, signal.SIGSTOP)
    try:
        status = hermesd.status()
        table = hermesd.run("status").stdout
    finally:
        os.kill(supervisor, signal.SIGCONT)

    assert status["supervisor"]["running"] is True
    assert status["supervisor"]["reachable"] is False
    writer = next(entry for entry in status["profiles"] if entry["name"] == "writer")
    assert writer["state"] == "running"
    assert "not responding on its control socket" in table


def test_reload_keeps_gateway_when_new_config_is_invalid(hermesd: Hermesd, home: Path) -> None:
    hermesd.up_detached("--only", "researcher,writer")
    before = {entry["name"]: entry["pid"] for entry in hermesd.status()["profiles"] if entry["pid"]}
    config = home / "profiles" / "researcher" / "config.yaml"
    config.write_text("kanban:\n  dispatch_in_gateway: maybe\n")

    result = hermesd.run("reload")

    assert result.returncode == 1
    assert "profile researcher keeps running on its previous settings" in result.stderr
    assert f"{config}: kanban.dispatch_in_gateway: invalid value 'maybe'" in result.stderr
    after = {entry["name"]: entry for entry in hermesd.status()["profiles"]}
    assert after["researcher"]["state"] == "running"
    assert after["researcher"]["pid"] == before["researcher"]
    assert after["writer"]["pid"] == before["writer"]


def test_reload_recreates_deleted_logs(hermesd: Hermesd, home: Path) -> None:
    hermesd.up_detached("--only", "writer")
    logs = home / "hermesd" / "logs"
    (logs / "writer.log").unlink()
    (logs / "supervisor.log").unlink()

    assert hermesd.run("reload").returncode == 0

    assert (logs / "writer.log").exists()
    wait_for(lambda: (logs / "supervisor.log").exists() and "reload:" in (logs / "supervisor.log").read_text(),
             message="the supervisor log to be recreated")
    assert hermesd.run("logs", "writer").returncode == 0


def test_env_file_replaced_by_directory_is_reported(hermesd: Hermesd, home: Path) -> None:
    hermesd.up_detached("--only", "writer")
    env_file = home / "profiles" / "writer" / ".env"
    env_file.mkdir()

    broken = hermesd.run("reload")

    assert broken.returncode == 1
    assert f"{env_file}: cannot read file (IsADirectoryError" in broken.stderr
    assert "keeps running on its previous settings" in hermesd.profile("writer")["error"]

    env_file.rmdir()
    fixed = hermesd.run("reload")

    assert fixed.returncode == 0, fixed.stderr
    assert hermesd.profile("writer")["error"] is None


def test_invalid_board_wide_setting_is_reported(hermesd: Hermesd, home: Path) -> None:
    hermesd.up_detached("--only", "writer")
    config = home / "config.yaml"
    config.write_text("kanban:\n  max_in_progress: lots\n")

    reload = hermesd.run("reload")
    status = hermesd.status()
    doctor = hermesd.run("doctor")
    up = hermesd.run("up", "--only", "coder", "--detach")

    message = f"{config}: kanban.max_in_progress: invalid value 'lots'"
    assert reload.returncode == 1
    assert message in reload.stderr
    assert any(message in warning for warning in status["warnings"])
    assert doctor.returncode == 1
    assert message in doctor.stdout
    assert up.returncode == 2
    assert message in up.stderr


def test_status_warns_about_other_kanban_home(hermesd: Hermesd, home: Path, tmp_path: Path) -> None:
    hermesd.up_detached("--only", "writer")
    elsewhere = tmp_path / "other-kanban"
    elsewhere.mkdir()

    status = json.loads(hermesd.run("status", "--json", env={"HERMES_KANBAN_HOME": str(elsewhere)}).stdout)

    assert f"the running supervisor uses the kanban home {home}" in status["warnings"][0]
