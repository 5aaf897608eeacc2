"""The supervisors under test: hermesd, supervisord and circus, each running the hermesd gateway.

Each supervisor runs in a temporary directory of its own, on its own copy of a Hermes
home, and listens only on unix sockets (hermesd's control socket, supervisord's
`unix_http_server`, circus's `ipc://` endpoints). Every process a run starts carries the
environment variable `BENCH_HERMESD_RUN` set to the run's directory. `stop()` ends the
supervisor by its pid and then kills any process still carrying that marker, so nothing
outlives a measurement, even after an error.

The peers run the command that hermesd runs for a gateway, without the parent channel:
`python -m gateway --home ROOT --profile NAME --dispatch-in-gateway true`. They cannot see
the gateway's READY message, so readiness is measured the same way for every supervisor:
by the gateway's own log line `gateway NAME started`, with the time taken from the line.

supervisord and circus run from their own virtual environment (`bench/peers_venv.py`),
created by `python -m bench.peers --install`; hermesd and the gateways run from the
environment that runs the benchmark.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import xmlrpc.client
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil

from bench import peers_venv

RUN_MARKER = "BENCH_HERMESD_RUN"
BIN_DIR = Path(sys.executable).parent

STOP_TIMEOUT_SECONDS = 90.0
POLL_SECONDS = 0.05

READY_LINE = re.compile(
    r"^(?P<time>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(?P<ms>\d{3}) \S+ gateway\[(?P<name>[^:\]]+):\d+\] "
    r"\S+: gateway (?P=name) started\b"
)


class PeerUnavailable(Exception):
    """A peer supervisor's scripts are missing: the peers' venv is absent, stale or broken."""


class StartFailed(Exception):
    """A supervisor or one of its gateways did not become ready in time."""


def gateway_command(home: Path, profile: str) -> list[str]:
    """Return the command line every supervisor runs for one profile (hermesd adds its parent channel)."""
    return [sys.executable, "-m", "gateway", "--home", str(home), "--profile", profile,
            "--dispatch-in-gateway", "true"]


def bench_environment(directory: Path, home: Path) -> dict[str, str]:
    """Build a supervisor's environment: no Hermes settings from the caller, HOME inside the run directory.

    PYTHONPATH is dropped as well: hermesd's top-level package is also named `supervisor`,
    so a PYTHONPATH naming this repository makes supervisord import hermesd's package and
    fail. The gateways import hermesd from its installation (`pip install -e .`).
    """
    environ = {key: value for key, value in os.environ.items()
               if not key.startswith(("HERMES_", "HERMESD_", "NOTIFY_SOCKET", "WATCHDOG_"))
               and key != "PYTHONPATH"}
    sandbox = directory / "user-home"
    sandbox.mkdir(exist_ok=True)
    environ["HOME"] = str(sandbox)
    environ["HERMES_HOME"] = str(home)
    environ["PYTHONUNBUFFERED"] = "1"
    environ[RUN_MARKER] = str(directory)
    return environ


def parse_ready_time(line: str) -> tuple[str, float] | None:
    """Return (profile, epoch seconds) for a gateway's `started` log line, else None."""
    match = READY_LINE.match(line)
    if match is None:
        return None
    seconds = time.mktime(time.strptime(match["time"], "%Y-%m-%d %H:%M:%S"))
    return match["name"], seconds + int(match["ms"]) / 1000


class ReadyWatcher:
    """Watches gateway log files for their `started` lines, ignoring what they held before."""

    def __init__(self, logs: dict[str, Path]):
        self.logs = logs
        self.offsets = {name: (path.stat().st_size if path.exists() else 0) for name, path in logs.items()}
        self.ready: dict[str, float] = {}

    def poll(self) -> None:
        for name, path in self.logs.items():
            if name in self.ready or not path.exists():
                continue
            with path.open("rb") as file:
                file.seek(self.offsets[name])
                text = file.read().decode("utf-8", "replace")
            for line in text.splitlines():
                parsed = parse_ready_time(line)
                if parsed is not None and parsed[0] == name:
                    self.ready[name] = parsed[1]
                    break

    def wait(self, timeout: float) -> dict[str, float]:
        """Wait until every gateway logged its `started` line; raise StartFailed after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            self.poll()
            if len(self.ready) == len(self.logs):
                return dict(self.ready)
            if time.monotonic() > deadline:
                missing = sorted(set(self.logs) - set(self.ready))
                raise StartFailed(f"no `gateway NAME started` line within {timeout:g} s from "
                                  f"{len(missing)} gateway(s): {', '.join(missing[:5])}; logs: "
                                  f"{self.logs[missing[0]].parent}")
            time.sleep(POLL_SECONDS)


class Supervisor:
    """One supervisor under test, with its own directory, home and processes."""

    key = "base"
    label = "base"
    # supervisord 4.3.0 stops its programs one at a time, about a second each (seen in its log),
    # so a graceful stop of 50 gateways takes close to a minute. Cleanup between measurements skips it.
    slow_graceful_stop = False

    def __init__(self, directory: Path, home: Path, profiles: list[str]):
        self.directory = directory
        self.home = home
        self.profiles = profiles
        directory.mkdir(parents=True, exist_ok=True)
        self.environ = bench_environment(directory, home)
        self.process: subprocess.Popen[bytes] | None = None

    # Interface of every supervisor

    def launch(self) -> None:
        """Run the start command without waiting for the gateways."""
        raise NotImplementedError

    def wait_own_ready(self, timeout: float) -> float:
        """Wait until the supervisor itself reports every gateway up; return that wall-clock time."""
        raise NotImplementedError

    def gateway_logs(self) -> dict[str, Path]:
        raise NotImplementedError

    def _poll_until(self, check: Callable[[], tuple[bool, Any]], timeout: float, what: str,
                    transient: tuple[type[BaseException], ...]) -> float:
        """Call `check` until it returns True; return the wall-clock time then, raise StartFailed on timeout.

        Exceptions of the `transient` types (the socket is not bound yet) count as "not yet".
        """
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise StartFailed(f"{self.label} exited with status {self.process.returncode}; "
                                  f"see {self.directory}")
            try:
                done, last = check()
            except transient as error:
                last = error
            else:
                if done:
                    return time.time()
            time.sleep(POLL_SECONDS)
        raise StartFailed(f"{self.label} did not report {what} within {timeout:g} s (last: {last})")

    def supervisor_pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def status_command(self) -> list[str]:
        raise NotImplementedError

    def request_stop(self) -> None:
        """Ask the supervisor to stop its gateways and exit (the command its users would run)."""
        pid = self.supervisor_pid()
        if pid is not None:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    # Shared behaviour

    def processes(self) -> list[psutil.Process]:
        """Return the supervisor process and every process below it."""
        pid = self.supervisor_pid()
        if pid is None:
            return []
        try:
            root = psutil.Process(pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def stop(self, graceful: bool = True) -> float:
        """Stop the supervisor and its gateways; return seconds until every process was gone.

        `graceful` runs the supervisor's own stop (`hermesd down`, SIGTERM to supervisord or
        circusd) and waits for it. Otherwise the supervisor and every process below it get
        SIGTERM at once, which ends supervisord faster than its one-program-at-a-time stop.
        """
        started = time.monotonic()
        watched = self.processes()
        try:
            if graceful:
                self.request_stop()
            else:
                signal_processes(watched, signal.SIGTERM)
        except (OSError, subprocess.SubprocessError) as error:
            print(f"bench: stopping {self.label} failed: {error}; killing its processes", file=sys.stderr)
        _gone, alive = psutil.wait_procs(watched, timeout=STOP_TIMEOUT_SECONDS)
        elapsed = time.monotonic() - started
        if self.process is not None:
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        kill_marked_processes(self.directory)
        if alive:
            print(f"bench: {self.label} left {len(alive)} process(es) after {STOP_TIMEOUT_SECONDS:g} s; "
                  "killed them", file=sys.stderr)
        return elapsed

    def clean_up(self) -> None:
        """Stop everything after a measurement by the fastest way that still lets the gateways exit."""
        self.stop(graceful=not self.slow_graceful_stop)

    def run_status(self) -> tuple[float, int]:
        """Run the status command once; return (seconds, exit code)."""
        started = time.perf_counter()
        result = subprocess.run(self.status_command(), env=self.environ, cwd=self.directory,
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                timeout=60)
        return time.perf_counter() - started, result.returncode

    def _popen(self, command: list[str], log_name: str) -> subprocess.Popen[bytes]:
        with (self.directory / log_name).open("ab") as log:
            return subprocess.Popen(command, env=self.environ, cwd=self.directory, stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def signal_processes(processes: list[psutil.Process], signum: int) -> None:
    for process in processes:
        try:
            process.send_signal(signum)
        except psutil.Error:
            pass


def kill_marked_processes(directory: Path) -> int:
    """Kill every process whose environment names `directory` as its run; return how many."""
    marked = []
    for process in psutil.process_iter(["pid", "environ"]):
        if process.pid == os.getpid():
            continue
        try:
            environ = process.info["environ"] or {}
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if environ.get(RUN_MARKER) == str(directory):
            marked.append(process)
    for process in marked:
        try:
            process.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(marked, timeout=5)
    return len(marked)


class Hermesd(Supervisor):
    """hermesd: `hermesd up --detach` returns once every gateway reported READY over its channel."""

    key = "hermesd"
    label = "hermesd"

    def __init__(self, directory: Path, home: Path, profiles: list[str]):
        super().__init__(directory, home, profiles)
        self.up_returned_at: float | None = None
        self.up_output = b""

    def _cli(self) -> list[str]:
        script = BIN_DIR / "hermesd"
        if script.exists():
            return [str(script), "--home", str(self.home)]
        return [sys.executable, "-m", "supervisor", "--home", str(self.home)]

    def launch(self) -> None:
        self.process = subprocess.Popen(self._cli() + ["up", "--detach"], env=self.environ, cwd=self.directory,
                                        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT)

    def wait_own_ready(self, timeout: float) -> float:
        assert self.process is not None
        try:
            self.up_output, _ = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise StartFailed(f"`hermesd up --detach` did not return within {timeout:g} s") from None
        returned = time.time()
        if self.process.returncode != 0:
            raise StartFailed(f"`hermesd up --detach` exited with status {self.process.returncode}:\n"
                              f"{self.up_output.decode(errors='replace')[-2000:]}")
        self.up_returned_at = returned
        return returned

    def gateway_logs(self) -> dict[str, Path]:
        logs = self.home / "hermesd" / "logs"
        return {name: logs / f"{name}.log" for name in self.profiles}

    def supervisor_pid(self) -> int | None:
        """Read the detached supervisor's pid from its state file (the `up` process has exited by then)."""
        try:
            state = json.loads((self.home / "hermesd" / "state.json").read_text())
        except (OSError, ValueError):
            return None
        pid = (state.get("supervisor") or {}).get("pid")
        return int(pid) if pid and psutil.pid_exists(int(pid)) else None

    def status_command(self) -> list[str]:
        return self._cli() + ["status"]

    def request_stop(self) -> None:
        subprocess.run(self._cli() + ["down"], env=self.environ, cwd=self.directory, stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=STOP_TIMEOUT_SECONDS + 10)


class UnixStreamHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.socket_path)


class UnixStreamTransport(xmlrpc.client.Transport):
    """XML-RPC over a unix socket, for supervisord's `unix_http_server` (no supervisord import needed)."""

    def __init__(self, path: str, timeout: float = 5.0):
        super().__init__()
        self.socket_path = path
        self.socket_timeout = timeout

    def make_connection(self, host: Any) -> http.client.HTTPConnection:
        return UnixStreamHTTPConnection(self.socket_path, self.socket_timeout)


def _require(script: str) -> Path:
    """Return the path of a peer's script in the peers' venv; raise PeerUnavailable when it cannot be used."""
    reason = peers_venv.missing_reason()
    if reason is not None:
        raise PeerUnavailable(reason)
    path = peers_venv.script(script)
    if not path.exists():
        raise PeerUnavailable(f"{path} does not exist; reinstall the peers' venv with "
                              f"`{peers_venv.INSTALL_COMMAND} --force`")
    return path


class Supervisord(Supervisor):
    """supervisord 4.x with one `[program:NAME]` per profile, as its users configure it."""

    slow_graceful_stop = True

    def __init__(self, directory: Path, home: Path, profiles: list[str], startsecs: int = 1):
        self.supervisord = _require("supervisord")
        self.supervisorctl = _require("supervisorctl")
        super().__init__(directory, home, profiles)
        self.startsecs = startsecs
        self.key = f"supervisord-startsecs{startsecs}"
        self.label = f"supervisord startsecs={startsecs}"
        self.socket_path = directory / "supervisor.sock"
        self.config_path = directory / "supervisord.conf"
        self.logs_dir = directory / "logs"
        self.logs_dir.mkdir(exist_ok=True)
        self.config_path.write_text(self._config())

    def _config(self) -> str:
        lines = [
            "[unix_http_server]",
            f"file = {self.socket_path}",
            "chmod = 0700",
            "",
            "[supervisord]",
            f"logfile = {self.directory / 'supervisord.log'}",
            f"pidfile = {self.directory / 'supervisord.pid'}",
            f"childlogdir = {self.logs_dir}",
            "nodaemon = true",
            "",
            "[rpcinterface:supervisor]",
            "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
            "",
            "[supervisorctl]",
            f"serverurl = unix://{self.socket_path}",
            "",
        ]
        for name in self.profiles:
            lines += [
                f"[program:{name}]",
                "command = " + " ".join(gateway_command(self.home, name)),
                f"directory = {self.directory}",
                f"startsecs = {self.startsecs}",
                "autorestart = true",
                "stopasgroup = true",
                "killasgroup = true",
                "redirect_stderr = true",
                f"stdout_logfile = {self.logs_dir / name}.log",
                "",
            ]
        return "\n".join(lines)

    def launch(self) -> None:
        self.process = self._popen([str(self.supervisord), "-c", str(self.config_path)], "supervisord.out")

    def _rpc(self) -> Any:
        return xmlrpc.client.ServerProxy("http://localhost", transport=UnixStreamTransport(str(self.socket_path)))

    def _all_running(self) -> tuple[bool, Any]:
        infos = self._rpc().supervisor.getAllProcessInfo()
        states = {info["name"]: info["statename"] for info in infos}
        return all(states.get(name) == "RUNNING" for name in self.profiles), states

    def wait_own_ready(self, timeout: float) -> float:
        """Wait until supervisord reports every program RUNNING (after `startsecs` of uptime)."""
        return self._poll_until(self._all_running, timeout, "every program RUNNING",
                                (OSError, xmlrpc.client.Error))

    def gateway_logs(self) -> dict[str, Path]:
        return {name: self.logs_dir / f"{name}.log" for name in self.profiles}

    def status_command(self) -> list[str]:
        return [str(self.supervisorctl), "-c", str(self.config_path), "status"]


class Circus(Supervisor):
    """circusd with one `[watcher:NAME]` per profile, endpoints on ipc:// sockets in the run directory."""

    key = "circus"
    label = "circus"

    def __init__(self, directory: Path, home: Path, profiles: list[str]):
        self.circusd = _require("circusd")
        self.circusctl = _require("circusctl")
        super().__init__(directory, home, profiles)
        self.endpoint = f"ipc://{directory / 'circus-control.sock'}"
        self.config_path = directory / "circus.ini"
        self.logs_dir = directory / "logs"
        self.logs_dir.mkdir(exist_ok=True)
        self.config_path.write_text(self._config())

    def _config(self) -> str:
        lines = [
            "[circus]",
            f"endpoint = {self.endpoint}",
            f"pubsub_endpoint = ipc://{self.directory / 'circus-pubsub.sock'}",
            # No stats_endpoint: setting one turns on the circusd-stats process, which is off by default.
            "httpd = false",
            f"pidfile = {self.directory / 'circusd.pid'}",
            "",
        ]
        for name in self.profiles:
            command = gateway_command(self.home, name)
            lines += [
                f"[watcher:{name}]",
                f"cmd = {command[0]}",
                "args = " + " ".join(command[1:]),
                "numprocesses = 1",
                f"working_dir = {self.directory}",
                "copy_env = true",
                "stdout_stream.class = FileStream",
                f"stdout_stream.filename = {self.logs_dir / name}.out",
                "stderr_stream.class = FileStream",
                f"stderr_stream.filename = {self.logs_dir / name}.log",
                "",
            ]
        return "\n".join(lines)

    def launch(self) -> None:
        self.process = self._popen([str(self.circusd), str(self.config_path)], "circusd.out")

    def wait_own_ready(self, timeout: float) -> float:
        """Wait until circus reports every watcher active.

        circus's client library is installed only in the peers' venv, so `bench/circus_ready.py`
        polls from there and prints the time it saw every watcher active.
        """
        command = [str(peers_venv.python()), "-I", str(Path(__file__).with_name("circus_ready.py")),
                   "--endpoint", self.endpoint, "--timeout", f"{timeout:g}", *self.profiles]
        poller = subprocess.Popen(command, env=self.environ, cwd=self.directory, stdin=subprocess.DEVNULL,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            while poller.poll() is None:
                if self.process is not None and self.process.poll() is not None:
                    raise StartFailed(f"{self.label} exited with status {self.process.returncode}; "
                                      f"see {self.directory}")
                time.sleep(POLL_SECONDS)
            output, errors = poller.communicate()
        finally:
            if poller.poll() is None:
                poller.kill()
                poller.wait()
        if poller.returncode != 0:
            raise StartFailed(f"{self.label} did not report every watcher active within {timeout:g} s: "
                              f"{output.strip()[-2000:]} {errors.strip()[-2000:]}")
        return float(json.loads(output)["ready_at"])

    def gateway_logs(self) -> dict[str, Path]:
        return {name: self.logs_dir / f"{name}.log" for name in self.profiles}

    def status_command(self) -> list[str]:
        return [str(self.circusctl), "--endpoint", self.endpoint, "status"]


def peers_available() -> dict[str, str | None]:
    """Map each peer to None when its scripts are in the peers' venv, or to the reason they are not."""
    reasons: dict[str, str | None] = {}
    for peer, scripts in (("supervisord", ("supervisord", "supervisorctl")), ("circus", ("circusd", "circusctl"))):
        reasons[peer] = None
        for script in scripts:
            try:
                _require(script)
            except PeerUnavailable as error:
                reasons[peer] = str(error)
                break
    return reasons


def make_supervisor(key: str, directory: Path, home: Path, profiles: list[str]) -> Supervisor:
    """Build the supervisor named by `key` (see SUPERVISOR_KEYS)."""
    if key == "hermesd":
        return Hermesd(directory, home, profiles)
    if key == "supervisord-startsecs1":
        return Supervisord(directory, home, profiles, startsecs=1)
    if key == "supervisord-startsecs0":
        return Supervisord(directory, home, profiles, startsecs=0)
    if key == "circus":
        return Circus(directory, home, profiles)
    raise ValueError(f"unknown supervisor {key!r}; expected one of {', '.join(SUPERVISOR_KEYS)}")


SUPERVISOR_KEYS = ("hermesd", "supervisord-startsecs1", "supervisord-startsecs0", "circus")
PEER_OF_KEY = {"hermesd": None, "supervisord-startsecs1": "supervisord", "supervisord-startsecs0": "supervisord",
               "circus": "circus"}
LABELS = {"hermesd": "hermesd", "supervisord-startsecs1": "supervisord startsecs=1",
          "supervisord-startsecs0": "supervisord startsecs=0", "circus": "circus"}


def remove_directory(directory: Path) -> None:
    shutil.rmtree(directory, ignore_errors=True)


@contextmanager
def running_supervisors(keys: list[str], workdir: Path, source_home: Path, profiles: list[str],
                        timeout: float = 120.0) -> Iterator[list[Supervisor]]:
    """Start each supervisor in turn on its own copy of `source_home` and yield them once all are ready.

    They start one after another, each after the previous one's gateways all logged
    `started`, so their start-ups do not compete for the CPU. All of them are stopped on
    exit, also after an error.
    """
    supervisors: list[Supervisor] = []
    try:
        for key in keys:
            directory = workdir / key
            home = shutil.copytree(source_home, directory / "home")
            supervisor = make_supervisor(key, directory, Path(home), profiles)
            supervisors.append(supervisor)
            watcher = ReadyWatcher(supervisor.gateway_logs())
            supervisor.launch()
            supervisor.wait_own_ready(timeout)
            watcher.wait(timeout)
        yield supervisors
    finally:
        for supervisor in supervisors:
            supervisor.clean_up()
        for supervisor in supervisors:
            shutil.rmtree(supervisor.directory, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.peers",
                                     description="Manage the virtual environment of the peer supervisors.")
    parser.add_argument("--install", action="store_true",
                        help=f"create {peers_venv.VENV_DIR} and install {peers_venv.REQUIREMENTS.name} into it, "
                             "unless it is already installed from the current file")
    parser.add_argument("--force", action="store_true", help="with --install: recreate the venv even when current")
    arguments = parser.parse_args(argv)
    if arguments.force and not arguments.install:
        parser.error("--force needs --install")
    if arguments.install:
        try:
            peers_venv.install(force=arguments.force)
        except (OSError, subprocess.SubprocessError) as error:
            print(f"bench: installing the peers' venv failed: {error}", file=sys.stderr)
            return 1
    for peer, reason in peers_available().items():
        print(f"{peer}: {reason or 'installed in ' + str(peers_venv.VENV_DIR)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
