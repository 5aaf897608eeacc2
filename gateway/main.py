"""Entry point of a gateway process: `python -m gateway --home ROOT --profile NAME ...`.

The supervisor starts one per profile and passes the profile's resolved
`dispatch_in_gateway` explicitly; the gateway does not resolve it again.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from gateway.adapters import build_adapters
from gateway.adapters.base import Settings
from gateway.candidate import Candidate
from gateway.delivery import DeliveryServer
from gateway.parent import ParentChannel, request_parent_death_signal
from gateway.services import leader_services
from kanban.home import Home
from kanban.profiles import ConfigError, load_profile, read_config_file

log = logging.getLogger("gateway")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 78  # EX_CONFIG from sysexits.h: the profile's configuration is unusable
EXIT_STEPPED_DOWN = 75  # EX_TEMPFAIL: lost the leadership; the supervisor restarts the gateway as a candidate

# Default interval of the heartbeat, which tells the supervisor that the gateway (and, in a
# leader, the leader loop) still makes progress; the supervisor passes its own interval.
HEARTBEAT_SECONDS = 10.0


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m gateway", description="Run one Hermes profile's gateway.")
    parser.add_argument("--home", required=True, help="root of the Hermes home")
    parser.add_argument("--profile", required=True, help="profile name")
    parser.add_argument("--dispatch-in-gateway", required=True, choices=["true", "false"],
                        help="whether this gateway competes for the kanban election lock")
    parser.add_argument("--parent-fd", type=int, default=None, help="inherited channel to the supervisor")
    parser.add_argument("--parent-pid", type=int, default=None, help="pid of the supervisor")
    parser.add_argument("--run-dir", default=None, help="directory for the gateway's sockets")
    parser.add_argument("--heartbeat-seconds", type=float, default=HEARTBEAT_SECONDS,
                        help="seconds between heartbeats to the supervisor")
    return parser.parse_args(argv)


def configure_logging(profile: str) -> None:
    logging.basicConfig(
        level=os.environ.get("HERMESD_LOG_LEVEL", "INFO").upper(),
        format=f"%(asctime)s %(levelname)s gateway[{profile}:%(process)d] %(name)s: %(message)s",
        stream=sys.stderr,
    )


class Gateway:
    """One profile's gateway: reports to the supervisor and, if a candidate, runs the election."""

    def __init__(self, arguments: argparse.Namespace):
        self.arguments = arguments
        self.home = Home.resolve(arguments.home)
        self.profile_name = arguments.profile
        self.dispatch_in_gateway = arguments.dispatch_in_gateway == "true"
        self.channel = ParentChannel(arguments.parent_fd)
        self.stop = threading.Event()
        self.candidate: Candidate | None = None
        self.run_dir = Path(arguments.run_dir) if arguments.run_dir else None
        self.delivery: DeliveryServer | None = None

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self._on_stop_signal)
        signal.signal(signal.SIGINT, self._on_stop_signal)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)

    def _on_stop_signal(self, signum: int, _frame: object) -> None:
        log.info("received %s; stopping", signal.Signals(signum).name)
        self.stop.set()
        if self.candidate is not None:
            self.candidate.wake()

    def run(self) -> int:
        profile = load_profile(self.home, self.profile_name)
        if profile.error is not None:
            log.error("cannot start: %s", profile.error.describe())
            self.channel.send("fatal", error=profile.error.describe())
            return EXIT_CONFIG
        root_config: dict = {}
        if self.dispatch_in_gateway:
            # A candidate needs the board-wide settings in the root config.yaml; other gateways do not.
            try:
                root_config = read_config_file(self.home.root / "config.yaml")
            except ConfigError as error:
                log.error("cannot start: %s", error.describe())
                self.channel.send("fatal", error=error.describe())
                return EXIT_CONFIG

        log.info("gateway %s started (pid %d, dispatch_in_gateway=%s)", self.profile_name, os.getpid(),
                 str(self.dispatch_in_gateway).lower())
        self.channel.watch_for_close(self.stop.set)
        try:
            self.start_delivery(profile.directory, profile.env)
        except OSError as error:
            log.error("cannot listen on the delivery socket in %s: %s", self.run_dir, error)
            return EXIT_FAILURE
        self.channel.send("ready", pid=os.getpid())

        if self.dispatch_in_gateway:
            services_factory = functools.partial(leader_services, run_dir=self.run_dir)
            self.candidate = Candidate(self.home, self.profile_name, root_config, profile.config,
                                       self.channel.send, self.stop, services_factory=services_factory)
            self.candidate.start()
        else:
            log.info("dispatch_in_gateway is false: this gateway never opens a board database")
            self.channel.send("role", role="off")

        while not self.stop.wait(self.arguments.heartbeat_seconds):
            self.send_heartbeat()

        return self._shut_down()

    def send_heartbeat(self) -> None:
        """Tell the supervisor this gateway is alive; a leader adds how long ago its loop last ran a pass."""
        pass_age = self.candidate.leader_pass_age() if self.candidate is not None else None
        if pass_age is None:
            self.channel.send("heartbeat")
        else:
            self.channel.send("heartbeat", leader_pass_age=round(pass_age, 3))

    def start_delivery(self, directory: Path, env_file: dict[str, str]) -> None:
        """Listen on the delivery socket, where the leader hands this profile its notifications."""
        if self.run_dir is None:
            log.info("no --run-dir: this gateway delivers no notifications")
            return
        settings = Settings(self.profile_name, directory, env_file, os.environ)
        self.delivery = DeliveryServer(self.run_dir, settings, build_adapters(settings))
        self.delivery.start()

    def _shut_down(self) -> int:
        if self.candidate is not None:
            self.candidate.wake()
            self.candidate.join(timeout=10)
        # The leader's notifier may deliver to this gateway's own socket, so it closes last.
        if self.delivery is not None:
            self.delivery.stop()
        if self.candidate is not None and self.candidate.stepped_down:
            log.info("gateway %s exits after stepping down", self.profile_name)
            return EXIT_STEPPED_DOWN
        log.info("gateway %s stopped", self.profile_name)
        return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    configure_logging(arguments.profile)
    request_parent_death_signal(arguments.parent_pid)
    gateway = Gateway(arguments)
    gateway.install_signal_handlers()
    return gateway.run()
