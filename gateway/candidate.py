"""A gateway that may lead: wait for the election lock, then lead until stopped or deposed."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from gateway.leader import LeaderRuntime, LeaderService, SteppedDown
from kanban.election import LeaderLock, LockPathError, lock_holders, network_filesystem, path_identity
from kanban.home import Home
from kanban.profiles import parse_bool

log = logging.getLogger(__name__)

# Pause before trying again after an error that a person has to fix (a symlink at the lock path).
RETRY_SECONDS = 2.0

# How often a standby checks whether the lock file it waits on was replaced.
HOUSEKEEPING_CHECK_SECONDS = 1.0


class Candidate:
    """Runs the election for one gateway in a thread of its own."""

    def __init__(self, home: Home, profile: str, root_config: dict[str, Any], profile_config: dict[str, Any],
                 report: Callable[..., None], stop: threading.Event,
                 services_factory: Callable[[LeaderRuntime], list[LeaderService]] | None = None):
        self.home = home
        self.profile = profile
        self.report = report
        self.stop = stop
        self.services_factory = services_factory
        self.lock = LeaderLock(home.lock_path)
        self.runtime: LeaderRuntime | None = None
        self.stepped_down = False
        self.allow_network_filesystem = _allows_network_filesystem(root_config, profile_config)
        self._thread = threading.Thread(target=self._run, name="election", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def leader_pass_age(self) -> float | None:
        """Seconds since the leader loop's last pass, or None when this candidate does not lead."""
        if self.runtime is None or self.stepped_down:
            return None
        return self.runtime.pass_age()

    def wake(self) -> None:
        if self.runtime is not None:
            self.runtime.wake.set()

    # The election

    def _run(self) -> None:
        try:
            self._compete()
        except Exception:
            log.exception("election thread of %s failed", self.profile)
            self.stepped_down = True
            self.stop.set()

    def _compete(self) -> None:
        reported_standby = False
        while not self.stop.is_set():
            refusal = self._network_filesystem_refusal()
            if refusal:
                self.report("role", role="standby", error=refusal)
                log.error("%s", refusal)
                self.stop.wait(RETRY_SECONDS * 5)
                continue

            try:
                acquired = self.lock.try_acquire()
            except LockPathError as error:
                log.error("cannot take the election lock: %s", error)
                self.report("role", role="standby", error=str(error))
                reported_standby = False
                self.stop.wait(RETRY_SECONDS)
                continue

            if acquired:
                self._lead()
                return

            if not reported_standby:
                holders = [holder.pid for holder in lock_holders(self.lock.path)]
                log.info("standing by: the election lock %s is held by pid %s", self.lock.path,
                         ", ".join(map(str, holders)) or "unknown")
                self.report("role", role="standby", holders=holders)
                reported_standby = True
            self._wait_for_free_lock()

    def _wait_for_free_lock(self) -> None:
        """Wait in the kernel for the lock; give up the wait when the lock file is replaced meanwhile."""
        identity = path_identity(self.lock.path)
        freed = threading.Event()

        def wait() -> None:
            try:
                self.lock.wait_until_free()
            except (OSError, LockPathError) as error:
                log.debug("waiting for the lock failed: %s", error)
            freed.set()

        threading.Thread(target=wait, name="lock-wait", daemon=True).start()
        while not self.stop.is_set():
            if freed.wait(HOUSEKEEPING_CHECK_SECONDS):
                return
            if path_identity(self.lock.path) != identity:
                log.warning("the lock file %s was replaced while waiting; waiting on the new file", self.lock.path)
                return

    def _network_filesystem_refusal(self) -> str | None:
        if self.allow_network_filesystem:
            return None
        for directory in (self.lock.path.parent, self.home.kanban_root):
            kind = network_filesystem(directory)
            if kind:
                return (f"refusing to lead: {directory} is on a network filesystem ({kind}), where file locks "
                        "are unreliable. Move the Hermes home to a local disk, or set "
                        "kanban.allow_network_filesystem: true in config.yaml to accept the risk")
        return None

    # Leading

    def _lead(self) -> None:
        runtime = LeaderRuntime(self.home, self.profile, self.lock, self.report)
        if self.services_factory is not None:
            runtime.services = self.services_factory(runtime)
        self.runtime = runtime
        log.info("%s is the leader: it holds the lock %s", self.profile, self.lock.path)
        self.report("role", role="leader")

        try:
            runtime.run(self.stop)
        except SteppedDown as error:
            log.error("stepping down: %s", error)
            self.stepped_down = True
        finally:
            runtime.shut_down()
            self.lock.release()
            log.info("%s released the election lock", self.profile)
            self.stop.set()



def _allows_network_filesystem(root_config: dict[str, Any], profile_config: dict[str, Any]) -> bool:
    for config in (profile_config, root_config):
        value = (config.get("kanban") or {}).get("allow_network_filesystem")
        if value is not None:
            return parse_bool(value) is True
    return False
