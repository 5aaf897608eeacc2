"""Supervisor settings from the `hermesd:` section of the root `config.yaml`.

    hermesd:
      start_timeout: 20      # seconds a gateway has to report ready
      stop_timeout: 10       # seconds between SIGTERM and SIGKILL
      backoff_initial: 1     # first restart delay in seconds; doubles per failure
      backoff_max: 60        # longest restart delay in seconds
      max_failures: 5        # quick failures in a row before a gateway is fatal
      stable_seconds: 10     # a run this long resets the failure count
      hang_timeout: 30       # a gateway silent this long, or a leader loop stuck this long, is killed; 0: never
      log_max_bytes: 10485760  # size at which a gateway log rotates
      log_backups: 5         # rotated files kept per gateway
"""

from __future__ import annotations

import random
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from kanban.profiles import ConfigError

SECTION = "hermesd"


@dataclass
class SupervisorSettings:
    """Timeouts, the restart policy (exponential backoff with jitter) and log rotation."""

    start_timeout: float = 20.0
    stop_timeout: float = 10.0
    backoff_initial: float = 1.0
    backoff_max: float = 60.0
    max_failures: int = 5
    stable_seconds: float = 10.0
    hang_timeout: float = 30.0
    log_max_bytes: int = 10 * 1024 * 1024
    log_backups: int = 5

    @classmethod
    def from_config(cls, config: dict[str, Any], path: Path | str = "config.yaml") -> SupervisorSettings:
        """Read the `hermesd:` section; raise ConfigError naming the key on a value of the wrong type."""
        section = config.get(SECTION) or {}
        if not isinstance(section, dict):
            raise ConfigError(path, "expected a mapping", key=SECTION, value=section,
                              fix="write `hermesd:` followed by indented `key: value` lines")
        settings = cls()
        known = {field.name: field.type for field in fields(cls)}
        for key, value in section.items():
            if key not in known:
                raise ConfigError(path, "unknown setting", key=f"{SECTION}.{key}", value=value,
                                  fix=f"use one of: {', '.join(known)}")
            settings._set(key, value, path)
        return settings

    def _set(self, key: str, value: Any, path: Path | str) -> None:
        integer = isinstance(getattr(self, key), int)
        valid = isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0
        if integer:
            valid = valid and float(value).is_integer()
        if not valid:
            kind = "a whole number" if integer else "a number of seconds"
            raise ConfigError(path, f"invalid value {value!r}", key=f"{SECTION}.{key}", value=value,
                              fix=f"use {kind}, zero or more")
        setattr(self, key, int(value) if integer else float(value))

    @property
    def heartbeat_seconds(self) -> float:
        """Interval the gateways heartbeat at: a third of hang_timeout, so one late heartbeat is not a hang."""
        if self.hang_timeout <= 0:
            return 30.0
        return max(self.hang_timeout / 3, 0.2)

    def restart_delay(self, failures: int) -> float:
        """Seconds before restart number `failures`: doubling from backoff_initial, capped, minus up to 25% jitter."""
        base = min(self.backoff_initial * 2 ** max(failures - 1, 0), self.backoff_max)
        return base * random.uniform(0.75, 1.0)
