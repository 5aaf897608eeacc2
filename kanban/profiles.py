"""Profile configuration: `config.yaml`, `.env`, and the resolved `dispatch_in_gateway` setting.

`dispatch_in_gateway` is resolved per profile, first match wins:

1. `HERMES_KANBAN_DISPATCH_IN_GATEWAY` in the profile's `.env` file;
2. `HERMES_KANBAN_DISPATCH_IN_GATEWAY` in hermesd's own environment;
3. `kanban.dispatch_in_gateway` in the profile's `config.yaml`;
4. `true`.

An invalid value is an error for that profile only.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kanban.home import Home

DISPATCH_ENV_VAR = "HERMES_KANBAN_DISPATCH_IN_GATEWAY"

SOURCE_ENV_FILE = "env_file"
SOURCE_ENVIRONMENT = "environment"
SOURCE_CONFIG = "config"
SOURCE_DEFAULT = "default"

_TRUE_WORDS = {"true", "1", "yes", "on"}
_FALSE_WORDS = {"false", "0", "no", "off"}


class ConfigError(Exception):
    """An unusable setting: names the file, the key, the value and how to fix it."""

    def __init__(self, path: Path | str, message: str, key: str | None = None, value: Any = None, fix: str = ""):
        self.path = str(path)
        self.key = key
        self.value = value
        self.message = message
        self.fix = fix
        super().__init__(self.describe())

    def describe(self) -> str:
        location = self.path if self.key is None else f"{self.path}: {self.key}"
        text = f"{location}: {self.message}"
        if self.fix:
            text += f". Fix: {self.fix}"
        return text

    def as_dict(self) -> dict[str, Any]:
        return {"file": self.path, "key": self.key, "value": self.value, "message": self.describe()}


def parse_bool(value: Any) -> bool | None:
    """Parse a YAML boolean or one of true/false/1/0/yes/no/on/off in any case; None when it is neither."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE_WORDS:
            return True
        if word in _FALSE_WORDS:
            return False
    return None


def read_env_file(path: Path) -> dict[str, str]:
    """Read a dotenv file: `KEY=VALUE` lines, optional `export`, quotes and `#` comments.

    Raises ConfigError (without the line's value, which may be a secret) on a line without `=`.
    """
    values: dict[str, str] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return values
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(path, f"cannot read file ({error.__class__.__name__}: {error})",
                          fix="make it a readable UTF-8 text file") from error

    for number, raw_line in enumerate(text.splitlines(), start=1):
        line = raw_line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export "):].lstrip()
        key, separator, value = line.partition("=")
        key = key.strip()
        if not separator or not key:
            raise ConfigError(path, f"line {number} is not KEY=VALUE", fix="write each setting as KEY=VALUE")
        values[key] = _unquote_env_value(value.strip())
    return values


def _unquote_env_value(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in ("'", '"'):
        return value[1:-1]
    comment = value.find(" #")
    if comment != -1:
        value = value[:comment].rstrip()
    return value


def read_config_file(path: Path) -> dict[str, Any]:
    """Read a profile's `config.yaml`; a missing file is an empty config."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(path, f"cannot read file ({error.__class__.__name__}: {error})",
                          fix="make it a readable UTF-8 text file") from error

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error)
        raise ConfigError(path, f"invalid YAML{where}: {problem}", fix="correct the YAML syntax") from error

    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(path, f"the top level is a {type(data).__name__}, expected a mapping",
                          fix="write the settings as `key: value` pairs")
    kanban = data.get("kanban")
    if kanban is not None and not isinstance(kanban, dict):
        raise ConfigError(path, f"expected a mapping, found {type(kanban).__name__}", key="kanban", value=kanban,
                          fix="write the kanban settings as `kanban:` followed by indented `key: value` lines")
    return data


@dataclass
class Profile:
    """One profile of a home with its loaded settings, or the error that keeps it from starting."""

    name: str
    directory: Path
    config: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    dispatch_in_gateway: bool | None = None
    dispatch_source: str | None = None
    error: ConfigError | None = None
    fingerprint: str = ""

    @property
    def config_path(self) -> Path:
        return self.directory / "config.yaml"

    @property
    def env_path(self) -> Path:
        return self.directory / ".env"

    @property
    def kanban_config(self) -> dict[str, Any]:
        return self.config.get("kanban") or {}


def _fingerprint(paths: list[Path]) -> str:
    """Hash the bytes of the profile's files, so that reload can tell which profiles changed."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(str(path).encode())
        try:
            digest.update(path.read_bytes())
        except OSError as error:
            # A missing file and a directory in its place are different changes.
            digest.update(f"<{type(error).__name__}>".encode())
    return digest.hexdigest()


def resolve_dispatch(profile: Profile, environ: Mapping[str, str]) -> tuple[bool, str]:
    """Resolve `dispatch_in_gateway` for a loaded profile; raise ConfigError on an invalid value."""
    candidates = [
        (profile.env.get(DISPATCH_ENV_VAR), SOURCE_ENV_FILE, profile.env_path, DISPATCH_ENV_VAR),
        (environ.get(DISPATCH_ENV_VAR), SOURCE_ENVIRONMENT, "environment", DISPATCH_ENV_VAR),
        (profile.kanban_config.get("dispatch_in_gateway"), SOURCE_CONFIG, profile.config_path,
         "kanban.dispatch_in_gateway"),
    ]
    for raw_value, source, where, key in candidates:
        if raw_value is None:
            continue
        value = parse_bool(raw_value)
        if value is None:
            raise ConfigError(where, f"invalid value {raw_value!r}", key=key, value=raw_value,
                              fix="use true or false (also accepted: yes/no, on/off, 1/0)")
        return value, source
    return True, SOURCE_DEFAULT


def load_profile(home: Home, name: str, environ: Mapping[str, str] | None = None) -> Profile:
    """Load one profile; an error is stored on the profile instead of raised."""
    if environ is None:
        environ = os.environ
    directory = home.profile_dir(name)
    profile = Profile(name=name, directory=directory)
    profile.fingerprint = _fingerprint([profile.config_path, profile.env_path])

    try:
        profile.config = read_config_file(profile.config_path)
        profile.env = read_env_file(profile.env_path)
        profile.dispatch_in_gateway, profile.dispatch_source = resolve_dispatch(profile, environ)
    except ConfigError as error:
        profile.error = error
    return profile


def load_profiles(home: Home, environ: Mapping[str, str] | None = None) -> list[Profile]:
    return [load_profile(home, name, environ) for name in home.profile_names()]
