"""Leader election: failover, foreign lock holders, a replaced lock file, fencing, and lock races."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import psutil
import pytest

from kanban.election import LeaderLock, lock_holders
from kanban.home import Home
from kanban.store import Board
from tests.helpers import Hermesd, board_file_holders, set_dispatch, wait_for

pytestmark = pytest.mark.chaos


def roles(hermesd: Hermesd) -> dict[str, str]:
    return {entry["name"]: entry["role"] for entry in hermesd.status()["profiles"]}


def leaders(hermesd: Hermesd) -> list[str]:
    return [name for name, role in roles(hermesd).items() if role == "leader"]


class BoardHolderSampler:
    """Samples, in a thread, which processes have board files open; records every sample."""

    def __init__(self, home: Path):
        self.home = home
        self.samples: list[dict[int, list[str]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(board_file_holders(self.home))

    def __enter__(self) -> BoardHolderSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()


def test_kill_leader_hands_over_to_standby(hermesd: Hermesd, home: Path) -> None:
    set_dispatch(home, "coder", "true")
    set_dispatch(home, "writer", "true")
    hermesd.up_detached()
    assert roles(hermesd) == {"default": "leader", "admin": "off", "coder": "standby", "researcher": "off",
                              "writer": "standby"}
    old_leader = hermesd.profile("default")["pid"]

    with BoardHolderSampler(home) as sampler:
        os.kill(old_leader, signal.SIGKILL)
        wait_for(lambda: len(leaders(hermesd)) == 1 and "default" not in leaders(hermesd),
                 message="a standby to lead")
        wait_for(lambda: hermesd.profile("default")["role"] == "standby", message="default back as standby")

    new_leader_name = leaders(hermesd)[0]
    new_leader_pid = hermesd.profile(new_leader_name)["pid"]
    assert new_leader_name in ("coder", "writer")
    assert len(sampler.samples) > 5
    for sample in sampler.samples:
        assert len(sample) <= 1, f"two processes had board files open: {sample}"
    assert list(board_file_holders(home)) == [new_leader_pid]
    assert hermesd.profile("default")["pid"] != old_leader


def test_foreign_lock_holder_keeps_candidates_standing_by(hermesd: Hermesd, home: Path) -> None:
    set_dispatch(home, "coder", "true")
    lock_path = home / "kanban" / ".dispatcher.lock"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import fcntl, os, sys, time
        fd = os.open({str(lock_path)!r}, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        print("locked", flush=True)
        sys.stdin.read()
    """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        hermesd.up_detached()

        status = hermesd.status()
        assert {entry["name"]: entry["role"] for entry in status["profiles"]}["default"] == "standby"
        assert {entry["name"]: entry["role"] for entry in status["profiles"]}["coder"] == "standby"
        assert status["lock"]["holder_pid"] == holder.pid
        assert status["lock"]["holder_profile"] is None
        assert board_file_holders(home) == {}
        doctor = hermesd.run("doctor")
        assert doctor.returncode == 1
        assert f"is held by pid {holder.pid}" in doctor.stdout
        assert "not a hermesd gateway" in doctor.stdout

        holder.stdin.close()
        holder.wait(timeout=10)
        wait_for(lambda: len(leaders(hermesd)) == 1, message="one candidate to take over")
    finally:
        holder.kill()
        holder.wait()
    leader = leaders(hermesd)[0]
    assert hermesd.status()["lock"]["holder_pid"] == hermesd.profile(leader)["pid"]


def test_deleted_lock_file_makes_leader_step_down(hermesd: Hermesd, home: Path) -> None:
    set_dispatch(home, "coder", "true")
    hermesd.up_detached()
    old_leader = hermesd.profile("default")["pid"]
    lock_path = home / "kanban" / ".dispatcher.lock"

    lock_path.unlink()

    wait_for(lambda: hermesd.profile("default")["pid"] != old_leader, message="the old leader to exit")
    wait_for(lambda: len(leaders(hermesd)) == 1, message="exactly one leader")
    time.sleep(1.5)
    assert len(leaders(hermesd)) == 1
    holders = lock_holders(lock_path)
    assert len(holders) == 1
    leader = leaders(hermesd)[0]
    assert holders[0].pid == hermesd.profile(leader)["pid"]
    assert list(board_file_holders(home)) == [holders[0].pid]
    # The old leader steps down on its own lock-file check, or earlier on the epoch check if the
    # standby took over first; either way it logs why.
    log = (home / "hermesd" / "logs" / "default.log").read_text()
    assert "was removed or replaced" in log or "newer than this leader's 1" in log


def test_symlink_at_lock_path_is_not_followed(hermesd: Hermesd, home: Path, tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.lock"
    lock_path = home / "kanban" / ".dispatcher.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    lock_path.symlink_to(target)

    hermesd.up_detached()

    wait_for(lambda: hermesd.profile("default").get("role_error"), message="the symlink to be reported")
    entry = hermesd.profile("default")
    assert entry["role"] == "standby"
    assert "is a symlink" in entry["role_error"]
    assert not target.exists()
    assert board_file_holders(home) == {}
    status = hermesd.status()
    assert any("symlink" in warning for warning in status["warnings"])
    doctor = hermesd.run("doctor")
    assert doctor.returncode == 1
    assert "is a symlink" in doctor.stdout


def test_frozen_leader_is_fenced_out(hermesd: Hermesd, home: Path) -> None:
    set_dispatch(home, "coder", "true")
    hermesd.up_detached()
    frozen = hermesd.profile("default")["pid"]
    lock_path = home / "kanban" / ".dispatcher.lock"

    os.kill(frozen, signal.SIGSTOP)
    try:
        lock_path.unlink()
        wait_for(lambda: hermesd.profile("coder")["role"] == "leader", message="coder to take over")
        board = Board("default", home / "kanban.db")
        try:
            assert board.stored_epoch() == 2
        finally:
            board.close()
    finally:
        os.kill(frozen, signal.SIGCONT)

    wait_for(lambda: hermesd.profile("default")["pid"] != frozen, message="the fenced leader to exit")
    log = (home / "hermesd" / "logs" / "default.log").read_text()
    assert "owner epoch is 2, newer than this leader's 1" in log
    assert leaders(hermesd) == ["coder"]


def test_lock_file_is_private_and_kept(hermesd: Hermesd, home: Path) -> None:
    hermesd.up_detached()
    lock_path = home / "kanban" / ".dispatcher.lock"

    assert stat.S_IMODE(lock_path.stat().st_mode) == 0o600
    hermesd.run("down")
    assert lock_path.exists()


def test_forked_child_cannot_release_lock(tmp_path: Path) -> None:
    lock_path = tmp_path / "kanban" / ".dispatcher.lock"
    lock = LeaderLock(lock_path)
    assert lock.try_acquire()
    held_fd = lock._lock._context.lock_file_fd

    pid = os.fork()
    if pid == 0:
        try:
            fcntl.flock(held_fd, fcntl.LOCK_UN)
        except OSError:
            pass
        lock.release()
        os._exit(0)
    os.waitpid(pid, 0)

    assert not LeaderLock(lock_path).try_acquire()
    assert [holder.pid for holder in lock_holders(lock_path)] == [os.getpid()]
    lock.release()


def test_lock_descriptor_is_not_inherited(tmp_path: Path) -> None:
    lock_path = tmp_path / "kanban" / ".dispatcher.lock"
    lock = LeaderLock(lock_path)
    assert lock.try_acquire()

    child = subprocess.run([sys.executable, "-c", "import os; print(sorted(os.listdir('/proc/self/fd')))"],
                           capture_output=True, text=True, close_fds=False)

    held_fd = lock._lock._context.lock_file_fd
    assert str(held_fd) not in eval(child.stdout)
    lock.release()


def test_threads_racing_never_both_hold(tmp_path: Path) -> None:
    lock_path = tmp_path / "kanban" / ".dispatcher.lock"
    inside = []
    overlaps = []
    wins = [0, 0]
    guard = threading.Lock()

    def contend(index: int) -> None:
        lock = LeaderLock(lock_path)
        for _round in range(200):
            while not lock.try_acquire():
                lock.wait_until_free()
            with guard:
                inside.append(index)
                if len(inside) > 1:
                    overlaps.append(list(inside))
            time.sleep(0.0005)
            with guard:
                inside.remove(index)
            wins[index] += 1
            lock.release()

    threads = [threading.Thread(target=contend, args=(index,)) for index in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert overlaps == []
    assert wins == [200, 200]


RACER = """
import os, sys, time
sys.path.insert(0, {root!r})
from pathlib import Path
from kanban.election import LeaderLock
lock = LeaderLock(Path({lock!r}))
journal = os.open({journal!r}, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
for _ in range(200):
    while not lock.try_acquire():
        lock.wait_until_free()
    os.write(journal, b"enter %d\\n" % os.getpid())
    time.sleep(0.0005)
    os.write(journal, b"leave %d\\n" % os.getpid())
    lock.release()
"""


def test_processes_racing_never_both_hold(tmp_path: Path) -> None:
    lock_path = tmp_path / "kanban" / ".dispatcher.lock"
    journal = tmp_path / "journal"
    root = str(Path(__file__).resolve().parent.parent)
    script = RACER.format(root=root, lock=str(lock_path), journal=str(journal))
    racers = [subprocess.Popen([sys.executable, "-c", script]) for _ in range(2)]
    for racer in racers:
        assert racer.wait(timeout=120) == 0

    lines = journal.read_text().split("\n")[:-1]
    assert len(lines) == 800
    for index in range(0, len(lines), 2):
        enter, leave = lines[index].split(), lines[index + 1].split()
        assert enter[0] == "enter", lines[index:index + 2]
        assert leave[0] == "leave", lines[index:index + 2]
        assert enter[1] == leave[1], f"two holders at once: {lines[index:index + 2]}"


def test_network_filesystem_refuses_to_lead(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A real NFS or sshfs mount is out of reach here, so the mount table lookup is replaced.
    from gateway import candidate as candidate_module

    monkeypatch.setattr(candidate_module, "network_filesystem", lambda path: "nfs4")
    home = Home.resolve(tmp_path)
    reports = []
    stop = threading.Event()
    candidate = candidate_module.Candidate(home, "default", {}, {}, lambda *a, **k: reports.append(k), stop)
    candidate.start()
    wait_for(lambda: reports, message="a refusal report")
    stop.set()
    candidate.join(5)

    assert reports[0]["role"] == "standby"
    assert "network filesystem (nfs4)" in reports[0]["error"]
    assert "kanban.allow_network_filesystem: true" in reports[0]["error"]
    assert lock_holders(home.lock_path) == []

    allowed = candidate_module.Candidate(home, "default", {"kanban": {"allow_network_filesystem": True}}, {},
                                         lambda *a, **k: None, threading.Event())
    assert allowed._network_filesystem_refusal() is None


def test_mount_table_lookup_finds_network_types(tmp_path: Path) -> None:
    from kanban.election import NETWORK_FILESYSTEMS, filesystem_type, network_filesystem

    assert filesystem_type(tmp_path) is not None
    assert network_filesystem(tmp_path) is None
    for kind in ("nfs4", "cifs", "fuse.sshfs"):
        assert kind in NETWORK_FILESYSTEMS


def write_worker_config(home: Path, profile: str, mode: str, out_dir: Path, dispatch: str = "false") -> None:
    """Make `profile` run tests/kanban_worker.py in `mode` as its kanban worker."""
    worker = Path(__file__).parent / "kanban_worker.py"
    command = [sys.executable, str(worker), str(out_dir), mode, "{task_id}"]
    directory = home if profile == "default" else home / "profiles" / profile
    (directory / "config.yaml").write_text(
        f"kanban:\n  dispatch_in_gateway: {dispatch}\n  worker_command: {json.dumps(command)}\n")


def test_standby_takes_over_while_worker_lives(hermesd: Hermesd, home: Path, tmp_path: Path) -> None:
    out_dir = tmp_path / "worker-out"
    out_dir.mkdir()
    write_worker_config(home, "researcher", "sleep", out_dir)
    for profile in ("coder", "admin"):
        write_worker_config(home, profile, "ok", out_dir, dispatch="true" if profile == "coder" else "false")
    hermesd.up_detached()
    starts = out_dir / "t_4f9ea14a.starts"
    wait_for(starts.exists, message="the researcher's worker to start")
    worker = psutil.Process(json.loads(starts.read_text().splitlines()[0])["pid"])
    leader = hermesd.profile("default")["pid"]

    os.kill(leader, signal.SIGKILL)

    wait_for(lambda: hermesd.profile("coder")["role"] == "leader", message="coder to take over")
    assert worker.is_running()
    assert worker.status() != psutil.STATUS_ZOMBIE
    lock_path = home / "kanban" / ".dispatcher.lock"
    assert [holder.pid for holder in lock_holders(lock_path)] == [hermesd.profile("coder")["pid"]]
    assert str(lock_path) not in [item.path for item in worker.open_files()]
    assert worker.pid not in board_file_holders(home)
    assert len(starts.read_text().splitlines()) == 1
