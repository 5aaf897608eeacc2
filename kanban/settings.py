"""Dispatcher settings: board-wide ones from the root `config.yaml`, the worker command per profile.

The board-wide keys (`dispatch_interval_seconds`, `max_in_progress`,
`max_in_progress_per_profile`, `failure_limit`, `default_assignee`) are read from the
`kanban:` section of the ROOT `config.yaml`, whichever profile leads, so a failover
never changes them. `worker_command` is read from the assignee's own profile config.
"""

from __future__ import annotations

import logging
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kanban.home import Home, is_valid_name
from kanban.profiles import ConfigError, read_config_file

log = logging.getLogger(__name__)

# Hermes Agent 0.19's defaults for the same keys.
DEFAULT_DISPATCH_INTERVAL_SECONDS = 60
DEFAULT_FAILURE_LIMIT = 2

# hermesd's own default; Hermes derives its limit from the machine's memory instead.
DEFAULT_MAX_IN_PROGRESS = 4

DEFAULT_WORKER_COMMAND = ["hermes", "-p", "{profile}", "chat", "-q", "work kanban task {task_id}"]
WORKER_COMMAND_KEY = "kanban.worker_command"

BOARD_WIDE_KEYS = (
    "dispatch_interval_seconds",
    "max_in_progress",
    "max_in_progress_per_profile",
    "failure_limit",
    "default_assignee",
)


@dataclass(frozen=True)
class DispatchSettings:
    """The board-wide dispatcher settings; None for a limit means no limit."""

    dispatch_interval_seconds: float = DEFAULT_DISPATCH_INTERVAL_SECONDS
    max_in_progress: int | None = DEFAULT_MAX_IN_PROGRESS
    max_in_progress_per_profile: int | None = None
    failure_limit: int = DEFAULT_FAILURE_LIMIT
    default_assignee: str | None = None


def _positive_int(path: Path, key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(path, f"invalid value {value!r}", key=f"kanban.{key}", value=value,
                          fix="use a whole number of at least 1")
    return value


def _positive_number(path: Path, key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ConfigError(path, f"invalid value {value!r}", key=f"kanban.{key}", value=value,
                          fix="use a number of seconds greater than 0")
    return float(value)


def parse_dispatch_settings(path: Path, kanban: dict[str, Any]) -> DispatchSettings:
    """Validate the board-wide keys of a `kanban:` section; raise ConfigError on the first bad one."""
    values: dict[str, Any] = {}
    if kanban.get("dispatch_interval_seconds") is not None:
        values["dispatch_interval_seconds"] = _positive_number(
            path, "dispatch_interval_seconds", kanban["dispatch_interval_seconds"])
    for key in ("max_in_progress", "max_in_progress_per_profile", "failure_limit"):
        if kanban.get(key) is not None:
            values[key] = _positive_int(path, key, kanban[key])
    assignee = kanban.get("default_assignee")
    if assignee is not None:
        if not isinstance(assignee, str) or not is_valid_name(assignee):
            raise ConfigError(path, f"invalid profile name {assignee!r}", key="kanban.default_assignee",
                              value=assignee, fix="name an existing profile, such as default")
        values["default_assignee"] = assignee
    return DispatchSettings(**values)


def board_wide_settings_error(home: Home) -> ConfigError | None:
    """Return the error in the root config.yaml's board-wide kanban settings, or None when they are valid.

    An unreadable config.yaml is not reported here: the default profile reports it.
    """
    path = home.root / "config.yaml"
    try:
        kanban = read_config_file(path).get("kanban") or {}
        parse_dispatch_settings(path, kanban)
    except ConfigError as error:
        if error.key is None:
            return None
        return error
    return None


class SettingsCache:
    """The root config's dispatcher settings, reread only when the file changes.

    An invalid file is logged once per change and the last good settings (or the
    defaults) stay in force, so a typo never stops dispatching.
    """

    def __init__(self, home: Home):
        self.path = home.root / "config.yaml"
        self._signature: tuple[int, int] | None = None
        self._settings = DispatchSettings()
        self.error: ConfigError | None = None

    def _file_signature(self) -> tuple[int, int] | None:
        try:
            result = self.path.stat()
        except OSError:
            return None
        return result.st_mtime_ns, result.st_size

    def get(self) -> DispatchSettings:
        signature = self._file_signature()
        if signature == self._signature and self._signature is not None:
            return self._settings
        self._signature = signature
        try:
            config = read_config_file(self.path)
            self._settings = parse_dispatch_settings(self.path, config.get("kanban") or {})
            self.error = None
        except ConfigError as error:
            self.error = error
            log.error("ignoring invalid dispatcher settings, keeping the previous ones: %s", error.describe())
        return self._settings


@dataclass(frozen=True)
class WorkerCommand:
    """The command template for one profile's workers and the file it came from."""

    template: list[str]
    source: Path

    def render(self, task_id: str, board: str, profile: str) -> list[str]:
        fields = {"task_id": task_id, "board": board, "profile": profile}
        return [part.format_map(fields) for part in self.template]


def worker_command(home: Home, profile: str) -> WorkerCommand:
    """Read `kanban.worker_command` from the profile's config.yaml (a list, or a string split like a shell).

    Raise ConfigError when the profile directory is missing or the value is unusable.
    """
    directory = home.profile_dir(profile)
    path = directory / "config.yaml"
    if not is_valid_name(profile) or not directory.is_dir():
        raise ConfigError(path, f"assignee profile {profile!r} does not exist", key=WORKER_COMMAND_KEY,
                          fix=f"create it with `hermes profile create {profile}` or reassign the task")
    config = read_config_file(path)
    value = (config.get("kanban") or {}).get("worker_command")
    if value is None:
        return WorkerCommand(list(DEFAULT_WORKER_COMMAND), path)

    if isinstance(value, str):
        try:
            template = shlex.split(value)
        except ValueError as error:
            raise ConfigError(path, f"cannot split {value!r}: {error}", key=WORKER_COMMAND_KEY, value=value,
                              fix="balance the quotes, or write the command as a YAML list") from error
    elif isinstance(value, list) and all(isinstance(part, (str, int, float)) for part in value):
        template = [str(part) for part in value]
    else:
        raise ConfigError(path, f"expected a list or a string, found {type(value).__name__}",
                          key=WORKER_COMMAND_KEY, value=value, fix="write the command as a YAML list of strings")

    if not template:
        raise ConfigError(path, "the command is empty", key=WORKER_COMMAND_KEY, value=value,
                          fix="name the program to run, or remove the key to use the default")
    try:
        WorkerCommand(template, path).render("t_00000000", "default", profile)
    except (KeyError, IndexError, ValueError) as error:
        raise ConfigError(path, f"unknown placeholder in {value!r} ({error})", key=WORKER_COMMAND_KEY, value=value,
                          fix="use only {task_id}, {board} and {profile}, and write literal braces as {{ }}") from error
    return WorkerCommand(template, path)
