"""`hermesd status`: what runs, with or without a supervisor, checked against the live system.

With a running supervisor the profiles come from it over the control socket. Without one
they come from the state file, and every recorded pid is checked against the process that
has it now (same pid and same start time), so a dead or reused pid is never shown as
running. The lock holder always comes from the kernel's lock table, not from hermesd.
"""

from __future__ import annotations

import os
import time
from typing import Any

from kanban.election import lock_holders, read_owner_record
from kanban.home import DEFAULT_PROFILE, Home, HomeError
from kanban.profiles import Profile, load_profiles
from kanban.settings import BOARD_WIDE_KEYS, board_wide_settings_error
from supervisor.control import ControlError, request
from supervisor.paths import StatePaths
from supervisor.processes import is_same_process
from kanban.jsonfile import read_json_object

ACTIVE = ("starting", "running", "stopping")



def supervisor_pid(paths: StatePaths) -> int | None:
    """Return the pid of the live supervisor of this home, or None (checked by pid and start time)."""
    state = read_json_object(paths.state_file) or {}
    record = state.get("supervisor")
    if isinstance(record, dict) and record.get("running") and isinstance(record.get("pid"), int):
        if is_same_process(record["pid"], record.get("start_time")):
            return record["pid"]
    holders = lock_holders(paths.supervisor_lock)
    return holders[0].pid if holders else None


def live_snapshot(paths: StatePaths, timeout: float = 5.0) -> dict[str, Any] | None:
    """Return the running supervisor's own view, or None when no supervisor responds."""
    if not paths.control_socket.exists():
        return None
    try:
        return request(paths.control_socket, "status", timeout=timeout)["status"]
    except ControlError:
        return None


def _entry_for_disk_profile(profile: Profile) -> dict[str, Any]:
    return {
        "name": profile.name,
        "state": "fatal" if profile.error else "stopped",
        "pid": None,
        "role": "none",
        "dispatch_in_gateway": profile.dispatch_in_gateway,
        "dispatch_source": profile.dispatch_source,
        "restarts": 0,
        "last_exit": None,
        "uptime": None,
        "log": None,
        "error": profile.error.describe() if profile.error else None,
        "config_error": profile.error.as_dict() if profile.error else None,
    }


def _check_recorded_entry(entry: dict[str, Any], supervisor_alive: bool) -> dict[str, Any]:
    """Turn a state-file entry into the truth: a process that is gone or reused is reported stopped.

    A live gateway keeps its recorded state while its supervisor lives (it only did not respond);
    without a supervisor it is `orphaned`.
    """
    entry = dict(entry)
    if entry.get("state") in ACTIVE or entry.get("pid"):
        if is_same_process(entry.get("pid"), entry.get("pid_start_time")):
            if not supervisor_alive:
                entry["state"] = "orphaned"
        else:
            if entry.get("state") in ACTIVE:
                entry["stale"] = True
            entry["state"] = "stopped"
            entry["pid"] = None
            entry["role"] = "none"
    entry["uptime"] = None
    return entry


def _recorded_entries(state: dict[str, Any]) -> list[dict[str, Any]]:
    """Return the state file's profile entries, without the fields whose type is wrong.

    The state file is hermesd's own, but it may have been edited or damaged by hand.
    """
    profiles = state.get("profiles")
    if not isinstance(profiles, list):
        return []
    entries = []
    for entry in profiles:
        if isinstance(entry, dict) and isinstance(entry.get("name"), str):
            cleaned = {key: value for key, value in entry.items() if _has_expected_type(key, value)}
            cleaned.setdefault("state", "stopped")
            cleaned.setdefault("role", "none")
            entries.append(cleaned)
    return entries


# Types of the state-file fields that status reads; a field of another type is dropped.
_FIELD_TYPES: dict[str, type | tuple[type, ...]] = {
    "state": str, "pid": int, "pid_start_time": (int, float), "role": str, "restarts": int, "failures": int,
    "last_exit": dict, "log": str, "error": str, "role_error": str, "boards": dict, "skipped_boards": dict,
    "dispatch_in_gateway": bool, "dispatch_source": str, "started_at": (int, float),
}


def _has_expected_type(key: str, value: Any) -> bool:
    expected = _FIELD_TYPES.get(key)
    if expected is None or value is None:
        return True
    return isinstance(value, expected) and not (expected is int and isinstance(value, bool))


def build_status(home: Home, names: list[str] | None = None) -> dict[str, Any]:
    """Collect the status of a home; raise HomeError when the home does not exist."""
    if home.root.exists() and not home.root.is_dir():
        raise HomeError(f"the Hermes home {home.root} is not a directory; pass --home with a directory")
    if not home.exists():
        raise HomeError(f"Hermes home not found: {home.root}. Check --home or HERMES_HOME, "
                        "or run `hermesd up` to create a minimal home there")
    paths = StatePaths(home)
    disk_profiles = {profile.name: profile for profile in load_profiles(home)}
    snapshot = live_snapshot(paths)
    state = read_json_object(paths.state_file) or {}

    supervisor: dict[str, Any] = {"running": False, "pid": None}
    if snapshot is not None:
        supervisor = dict(snapshot["supervisor"])
        recorded = snapshot["profiles"]
    else:
        pid = supervisor_pid(paths)
        if pid is not None:
            supervisor = {"running": True, "pid": pid, "reachable": False}
        recorded = [_check_recorded_entry(entry, pid is not None) for entry in _recorded_entries(state)]
        recorded_supervisor = state.get("supervisor") if isinstance(state.get("supervisor"), dict) else {}
        supervisor["stale_state"] = bool(recorded_supervisor.get("running") and pid is None)

    entries: dict[str, dict[str, Any]] = {}
    for entry in recorded:
        if entry.get("name") in disk_profiles or snapshot is not None:
            entries[entry["name"]] = entry
    for name, profile in disk_profiles.items():
        entry = entries.setdefault(name, _entry_for_disk_profile(profile))
        if snapshot is None or entry.get("dispatch_source") is None:
            entry["dispatch_in_gateway"] = profile.dispatch_in_gateway
            entry["dispatch_source"] = profile.dispatch_source
        if profile.error is not None:
            entry["config_error"] = profile.error.as_dict()
            if entry.get("state") not in ACTIVE:
                entry["error"] = profile.error.describe()

    warnings = warnings_for(home, disk_profiles, list(entries.values()))
    supervised_kanban_home = (snapshot or state).get("kanban_home")
    if supervisor.get("running") and supervised_kanban_home and supervised_kanban_home != str(home.kanban_root):
        warnings.insert(0, f"the running supervisor uses the kanban home {supervised_kanban_home}, but this "
                           f"command looked at {home.kanban_root}: the lock and board details below are not the "
                           "ones its leader uses. Set HERMES_KANBAN_HOME the same way for both")

    profiles = list(entries.values())
    if names:
        profiles = [entry for entry in profiles if entry["name"] in names]

    return {
        "home": str(home.root),
        "kanban_home": str(home.kanban_root),
        "supervisor": supervisor,
        "profiles": profiles,
        "lock": lock_status(home, list(entries.values())),
        "warnings": warnings,
        "checked_at": time.time(),
    }


def lock_status(home: Home, entries: list[dict[str, Any]]) -> dict[str, Any]:
    """Who holds the election lock, by the kernel's lock table; the profile when it is a hermesd gateway."""
    path = home.lock_path
    holders = lock_holders(path)
    holder_pid = holders[0].pid if holders else None
    holder_profile = None
    if holder_pid is not None:
        for entry in entries:
            if entry.get("pid") == holder_pid:
                holder_profile = entry["name"]
        record = read_owner_record(home.owner_record_path) or {}
        if holder_profile is None and record.get("pid") == holder_pid:
            holder_profile = record.get("profile")

    return {
        "path": str(path),
        "holder_pid": holder_pid,
        "holder_profile": holder_profile,
        "holder_is_hermesd": holder_profile is not None,
        "symlink": os.path.islink(path),
        "owner_record": read_owner_record(home.owner_record_path),
    }


def warnings_for(home: Home, disk_profiles: dict[str, Profile], entries: list[dict[str, Any]]) -> list[str]:
    warnings = []
    for name, profile in disk_profiles.items():
        if name == DEFAULT_PROFILE:
            continue
        ignored = [key for key in BOARD_WIDE_KEYS if key in profile.kanban_config]
        if ignored:
            warnings.append(f"{profile.config_path}: kanban.{', kanban.'.join(ignored)} is ignored: board-wide "
                            f"dispatcher settings come from {home.root / 'config.yaml'} whichever profile leads")

    settings_error = board_wide_settings_error(home)
    if settings_error is not None:
        warnings.append(f"the board-wide dispatcher settings are invalid, so the leader keeps its previous (or "
                        f"default) ones: {settings_error.describe()}")

    for directory in home.invalid_profile_dirs():
        warnings.append(f"{directory} is not a valid profile name, so hermesd ignores it. Rename it to "
                        "1 to 64 characters of a-z, 0-9, '_' and '-', starting with a letter or digit")

    standbys = [entry["name"] for entry in entries if entry.get("role") == "standby"]
    if standbys:
        warnings.append(f"{len(standbys)} candidate(s) standing by: {', '.join(standbys)}. To make one owner "
                        "explicit, set kanban.dispatch_in_gateway: false in the config.yaml of every other profile")
    if os.path.islink(home.lock_path):
        warnings.append(f"{home.lock_path} is a symlink; no hermesd gateway will lead until it is removed")
    return warnings


def all_running(status: dict[str, Any]) -> bool:
    return bool(status["profiles"]) and all(entry["state"] == "running" for entry in status["profiles"])
