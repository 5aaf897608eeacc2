"""The `hermesd` command line.

Exit codes: 0 success; 1 an operation failed (a gateway did not start, the supervisor
did not answer); 2 invalid usage or input (unknown profile, invalid name); 3 `status`:
some selected profile is not running; 4 the home does not exist or cannot be used.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from kanban.bootstrap import create_minimal_home
from kanban.home import Home, HomeError, is_valid_name
from kanban.settings import board_wide_settings_error
from supervisor import output
from supervisor.control import ControlError, request
from supervisor.paths import StatePaths
from supervisor.processes import is_same_process, start_time
from supervisor.settings import SupervisorSettings
from supervisor.status import all_running, build_status, supervisor_pid

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_RUNNING = 3
EXIT_HOME = 4

# How long one control request may take; a supervisor starting many gateways responds between starts.
CONTROL_TIMEOUT_SECONDS = 30.0
# How long `up --detach` waits for every gateway to report ready or fail.
DETACH_TIMEOUT_SECONDS = 60.0

app = typer.Typer(
    name="hermesd",
    help="Run every profile of a Hermes Agent home as a gateway, with one elected kanban owner.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

log = logging.getLogger("hermesd")


class Context:
    def __init__(self, home_option: Optional[Path]):
        self.home_option = home_option

    @property
    def home(self) -> Home:
        return Home.resolve(self.home_option)


def fail(message: str, code: int) -> typer.Exit:
    typer.echo(f"hermesd: error: {message}", err=True)
    return typer.Exit(code)


@app.callback()
def main_options(
    context: typer.Context,
    home: Annotated[Optional[Path], typer.Option(
        "--home", help="Root of the Hermes home; overrides HERMES_HOME (default ~/.hermes).")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug messages.")] = False,
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s hermesd[%(process)d] %(name)s: %(message)s",
    )
    context.obj = Context(home)


def _split_names(values: list[str] | None) -> list[str]:
    names: list[str] = []
    for value in values or []:
        for part in value.split(","):
            part = part.strip()
            if part and part not in names:
                names.append(part)
    return names


def _validate_names(home: Home, names: list[str], option: str) -> None:
    known = home.profile_names()
    for name in names:
        if not is_valid_name(name):
            raise fail(f"invalid profile name {name!r} in {option}: use a-z, 0-9, '_' and '-'", EXIT_USAGE)
    unknown = [name for name in names if name not in known]
    if unknown:
        raise fail(f"unknown profile {', '.join(map(repr, unknown))} in {option}; profiles in {home.root}: "
                   f"{', '.join(known)}. Create it with `hermes profile create NAME`", EXIT_USAGE)


def _prepare_home(home: Home) -> None:
    """Create a minimal home where there is none, and the state directory; exit 4 when that fails."""
    if home.root.exists() and not home.root.is_dir():
        raise fail(f"the Hermes home {home.root} is not a directory; pass --home with a directory", EXIT_HOME)
    try:
        if not home.exists():
            create_minimal_home(home)
            typer.echo(f"created a minimal Hermes home at {home.root}", err=True)
        StatePaths(home).create()
    except OSError as error:
        raise fail(f"cannot prepare the Hermes home {home.root}: {error.strerror} ({error.filename}). "
                   "Check its permissions, or pass --home with a writable directory", EXIT_HOME) from None


def _validate_settings(home: Home) -> None:
    from kanban.profiles import ConfigError, read_config_file
    from supervisor.settings import SupervisorSettings

    path = home.root / "config.yaml"
    try:
        config = read_config_file(path)
    except ConfigError:
        return  # the default profile reports an unreadable config.yaml itself
    try:
        SupervisorSettings.from_config(config, path)
    except ConfigError as error:
        raise fail(error.describe(), EXIT_USAGE) from None
    settings_error = board_wide_settings_error(home)
    if settings_error is not None:
        raise fail(settings_error.describe(), EXIT_USAGE)


def _warn_without_owner(home: Home, names: list[str]) -> None:
    """Warn when no profile that will run is a candidate, since then nothing dispatches the boards."""
    from kanban.profiles import load_profiles

    selected = [profile for profile in load_profiles(home) if not names or profile.name in names]
    if selected and not any(profile.dispatch_in_gateway for profile in selected):
        typer.echo("hermesd: warning: no profile started here has dispatch_in_gateway true, so no gateway "
                   "will dispatch the boards or send notifications", err=True)


def _report_config_errors(home: Home, names: list[str]) -> int:
    from kanban.profiles import load_profiles

    errors = 0
    for profile in load_profiles(home):
        if profile.error is not None and (not names or profile.name in names):
            typer.echo(f"hermesd: error: profile {profile.name} is not started: {profile.error.describe()}",
                       err=True)
            errors += 1
    return errors


# up

@app.command()
def up(
    context: typer.Context,
    only: Annotated[Optional[list[str]], typer.Option(
        "--only", help="Start only this profile (repeatable, or comma-separated).")] = None,
    detach: Annotated[bool, typer.Option(
        "--detach", "-d", help="Run the supervisor in the background; return once every gateway is ready or failed.")
    ] = False,
    timeout: Annotated[float, typer.Option(
        help="With --detach: seconds to wait for the gateways to become ready.")] = DETACH_TIMEOUT_SECONDS,
) -> None:
    """Start the gateways of every profile (or of --only) and supervise them."""
    home = context.obj.home
    _prepare_home(home)
    names = _split_names(only)
    if only is not None and not names:
        raise fail("--only was given no profile name; name at least one, or leave --only out to start all",
                   EXIT_USAGE)
    _validate_names(home, names, "--only")
    _validate_settings(home)
    _warn_without_owner(home, names)
    config_errors = _report_config_errors(home, names)
    paths = StatePaths(home)

    if supervisor_pid(paths) is not None:
        _start_in_running_supervisor(home, paths, names, timeout)
        raise typer.Exit(EXIT_FAILED if config_errors else EXIT_OK)

    if detach:
        _start_detached(home, paths, names)
        code = _wait_until_settled(home, paths, names, timeout)
        raise typer.Exit(EXIT_FAILED if config_errors or code else EXIT_OK)

    from supervisor.arbiter import AlreadyRunning, Supervisor  # only the commands that supervise load it

    supervisor = Supervisor(home, names or None)
    try:
        supervisor.acquire_home()
    except AlreadyRunning as error:
        raise fail(f"{error}; use `hermesd status` or `hermesd down`", EXIT_FAILED) from None
    raise typer.Exit(supervisor.run())


@app.command("supervise", hidden=True)
def supervise(
    context: typer.Context,
    only: Annotated[Optional[list[str]], typer.Option("--only")] = None,
) -> None:
    """Run the supervisor in the foreground (used by `up --detach`)."""
    home = context.obj.home
    from supervisor.arbiter import AlreadyRunning, Supervisor

    supervisor = Supervisor(home, _split_names(only) or None)
    try:
        supervisor.acquire_home()
    except AlreadyRunning as error:
        raise fail(str(error), EXIT_FAILED) from None
    _log_to_rotating_file(StatePaths(home).supervisor_log, supervisor.settings)
    raise typer.Exit(supervisor.run())


def _log_to_rotating_file(path: Path, settings: SupervisorSettings) -> None:
    """Send the detached supervisor's log to a rotating file; uncaught errors are logged there too.

    Until this runs, the process's stdout and stderr are appended to the same file by
    `up --detach`, which catches a supervisor that fails before it can log. After it, they
    go to /dev/null, because a rotated-away file would swallow them.
    """
    handler = logging.handlers.RotatingFileHandler(path, maxBytes=settings.log_max_bytes,
                                                   backupCount=settings.log_backups)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s hermesd[%(process)d] %(name)s: %(message)s"))
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)

    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.dup2(null, 2)
    os.close(null)
    sys.excepthook = lambda *exc_info: log.critical("supervisor failed", exc_info=exc_info)


def _start_in_running_supervisor(home: Home, paths: StatePaths, names: list[str], timeout: float) -> None:
    try:
        response = request(paths.control_socket, "start", names=names)
    except ControlError as error:
        raise fail(f"a supervisor is running but does not respond: {error}", EXIT_FAILED) from None
    started = response.get("started") or []
    typer.echo(f"supervisor already running; started: {', '.join(started) or 'nothing new'}")
    _wait_until_settled(home, paths, names, timeout)


def _start_detached(home: Home, paths: StatePaths, names: list[str]) -> None:
    """Start the supervisor in the background and wait until its control socket responds.

    When another `hermesd up` started a supervisor at the same moment, ours exits (one
    supervisor per home) and the profiles asked for here are started in the other one.
    """
    paths.create()
    command = [sys.executable, "-m", "supervisor", "--home", str(home.root), "supervise"]
    for name in names:
        command += ["--only", name]
    log_fd = os.open(paths.supervisor_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log_fd, stderr=log_fd,
                                   start_new_session=True, close_fds=True)
    finally:
        os.close(log_fd)

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            snapshot = request(paths.control_socket, "status", timeout=2)["status"]
        except ControlError:
            snapshot = None
        if snapshot is not None and snapshot["supervisor"]["pid"] == process.pid:
            typer.echo(f"supervisor started in the background (pid {process.pid}); log: {paths.supervisor_log}")
            return
        if snapshot is not None:
            _start_in_other_supervisor(paths, names, snapshot["supervisor"]["pid"])
            return
        if process.poll() is not None and supervisor_pid(paths) is None:
            raise fail(f"the supervisor exited with status {process.returncode}; see {paths.supervisor_log}",
                       EXIT_FAILED)
        time.sleep(0.05)
    raise fail(f"the supervisor did not open its control socket within 10 s; see {paths.supervisor_log}",
               EXIT_FAILED)


def _start_in_other_supervisor(paths: StatePaths, names: list[str], pid: int) -> None:
    try:
        response = request(paths.control_socket, "start", timeout=CONTROL_TIMEOUT_SECONDS, names=names)
    except ControlError as error:
        raise fail(f"another supervisor (pid {pid}) started first and did not take the request: {error}",
                   EXIT_FAILED) from None
    started = ", ".join(response.get("started") or []) or "nothing new"
    typer.echo(f"another supervisor (pid {pid}) started first; started there: {started}")


def _is_settled(entry: dict[str, Any]) -> bool:
    if entry["state"] in ("starting", "stopping"):
        return False
    if entry["state"] == "running" and entry.get("dispatch_in_gateway") and entry.get("role") == "none":
        return False  # a candidate that has not yet competed for the lock
    return True


def _wait_until_settled(home: Home, paths: StatePaths, names: list[str], timeout: float) -> int:
    deadline = time.monotonic() + timeout
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        try:
            snapshot = request(paths.control_socket, "status", timeout=CONTROL_TIMEOUT_SECONDS)["status"]
        except ControlError as error:
            raise fail(f"lost contact with the supervisor: {error}", EXIT_FAILED) from None
        selected = names or snapshot.get("wanted") or []
        entries = [entry for entry in snapshot["profiles"] if entry["name"] in selected]
        queued = [entry for entry in entries if entry["state"] == "stopped"]
        if entries and not queued and all(_is_settled(entry) for entry in entries):
            break
        time.sleep(0.05)
    status = build_status(home, names or None)
    if names:
        status["profiles"] = [entry for entry in status["profiles"] if entry["name"] in names]
    else:
        status["profiles"] = [entry for entry in status["profiles"] if entry["state"] != "stopped"]
    typer.echo(output.status_table(status))
    return EXIT_OK if all_running(status) else EXIT_FAILED


# down

@app.command()
def down(
    context: typer.Context,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the supervisor to exit.")] = 60.0,
) -> None:
    """Stop every gateway and the supervisor."""
    home = context.obj.home
    if not home.exists():
        raise fail(f"Hermes home not found: {home.root}", EXIT_HOME)
    paths = StatePaths(home)
    pid = supervisor_pid(paths)
    if pid is None:
        typer.echo("no supervisor is running for this home")
        return
    expected_start = start_time(pid)
    try:
        request(paths.control_socket, "down")
    except ControlError as error:
        raise fail(f"the supervisor (pid {pid}) does not respond: {error}. Stop it with `kill {pid}`",
                   EXIT_FAILED) from None

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not is_same_process(pid, expected_start):
            typer.echo(f"stopped the supervisor (pid {pid}) and its gateways")
            return
        time.sleep(0.05)
    raise fail(f"the supervisor (pid {pid}) is still running after {timeout:g} s", EXIT_FAILED)


# status

@app.command()
def status(
    context: typer.Context,
    names: Annotated[Optional[list[str]], typer.Argument(help="Profiles to show (default: all).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Show each profile's gateway: state, pid, role, dispatch setting and its source.

    Exit status: 0 when every selected profile runs, 3 when some do not, 4 when the home
    does not exist.
    """
    home = context.obj.home
    selected = _split_names(names)
    try:
        if home.exists():
            _validate_names(home, selected, "the profile list")
        result = build_status(home, selected or None)
    except HomeError as error:
        raise fail(str(error), EXIT_HOME) from None

    if as_json:
        typer.echo(json.dumps(result, indent=2, default=str))
    else:
        typer.echo(output.status_table(result))
    raise typer.Exit(EXIT_OK if all_running(result) else EXIT_NOT_RUNNING)


# start, stop, restart, reload

def _control(home: Home, command: str, names: list[str]) -> dict[str, Any]:
    if not home.exists():
        raise fail(f"Hermes home not found: {home.root}", EXIT_HOME)
    paths = StatePaths(home)
    if supervisor_pid(paths) is None:
        raise fail("no supervisor is running for this home; start one with `hermesd up`", EXIT_FAILED)
    try:
        return request(paths.control_socket, command, names=names)
    except ControlError as error:
        raise fail(str(error), EXIT_FAILED) from None


@app.command()
def start(context: typer.Context, names: Annotated[list[str], typer.Argument(help="Profiles to start.")]) -> None:
    """Start stopped, exited or fatal gateways in the running supervisor."""
    selected = _split_names(names)
    _validate_names(context.obj.home, selected, "the profile list")
    response = _control(context.obj.home, "start", selected)
    typer.echo(f"started: {', '.join(response.get('started') or []) or 'nothing (already running)'}")


@app.command()
def stop(context: typer.Context, names: Annotated[list[str], typer.Argument(help="Profiles to stop.")]) -> None:
    """Stop gateways; they stay stopped until `hermesd start` or `hermesd restart`."""
    selected = _split_names(names)
    _validate_names(context.obj.home, selected, "the profile list")
    response = _control(context.obj.home, "stop", selected)
    typer.echo(f"stopped: {', '.join(response.get('stopped') or [])}")


@app.command()
def restart(context: typer.Context, names: Annotated[list[str], typer.Argument(help="Profiles to restart.")]) -> None:
    """Restart gateways, including fatal ones (this clears their failure count)."""
    selected = _split_names(names)
    _validate_names(context.obj.home, selected, "the profile list")
    response = _control(context.obj.home, "restart", selected)
    typer.echo(f"restarting: {', '.join(response.get('restarted') or [])}")


@app.command()
def reload(context: typer.Context) -> None:
    """Start new profiles, stop removed ones and restart changed ones (same as SIGHUP)."""
    response = _control(context.obj.home, "reload", [])
    for key in ("added", "removed", "changed"):
        typer.echo(f"{key}: {', '.join(response.get(key) or []) or 'none'}")
    errors = response.get("errors") or []
    for error in errors:
        typer.echo(f"hermesd: error: {error}", err=True)
    if errors:
        raise typer.Exit(EXIT_FAILED)


# logs

@app.command()
def logs(
    context: typer.Context,
    name: Annotated[str, typer.Argument(help="Profile name, or `supervisor`.")],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new lines.")] = False,
    lines: Annotated[int, typer.Option("--lines", "-n", help="Number of last lines to print.")] = 50,
) -> None:
    """Print a gateway's log (or the supervisor's)."""
    home = context.obj.home
    if not home.exists():
        raise fail(f"Hermes home not found or not a directory: {home.root}", EXIT_HOME)
    paths = StatePaths(home)
    if name != "supervisor":
        _validate_names(home, [name], "`hermesd logs`")
    path = paths.supervisor_log if name == "supervisor" else paths.gateway_log(name)
    if not path.exists() and not follow:
        raise fail(f"no log for {name}: {path} does not exist (not started yet, or deleted: "
                   "`hermesd reload` recreates it)", EXIT_FAILED)
    output.print_log(path, lines, follow)


def _register_subcommands() -> None:
    from supervisor import doctor, kanban_cli

    doctor.register(app)
    kanban_cli.register(app)


_register_subcommands()


def _reject_invalid_utf8(arguments: list[str]) -> None:
    """Exit 2 when an argument is not valid UTF-8, before it can reach a file or a database.

    Python decodes undecodable bytes in argv to lone surrogates, which cannot be written as
    UTF-8 later; rejecting them here gives one clear message instead of a traceback.
    """
    for position, argument in enumerate(arguments, start=1):
        try:
            argument.encode("utf-8")
        except UnicodeEncodeError:
            shown = argument.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
            typer.echo(f"hermesd: error: argument {position} ({shown!r}) is not valid UTF-8; "
                       "pass text in UTF-8", err=True)
            raise SystemExit(EXIT_USAGE) from None


def main() -> None:
    _reject_invalid_utf8(sys.argv[1:])
    app()
