"""The services a leader runs on every pass (the dispatcher, the notifier), built when it takes over."""

from __future__ import annotations

from pathlib import Path

from gateway.delivery import DeliveryClient
from gateway.leader import LeaderRuntime, LeaderService
from kanban.dispatcher import Dispatcher
from kanban.notifier import Notifier


def leader_services(runtime: LeaderRuntime, run_dir: Path | None = None) -> list[LeaderService]:
    """Build the leader's services; each gets the runtime (home, boards, epoch, wake event).

    `run_dir` contains the gateways' delivery sockets; without it the notifier is not started.
    """
    services: list[LeaderService] = [Dispatcher(runtime.home, runtime.wake)]
    if run_dir is not None:
        client = DeliveryClient(run_dir)
        services.append(Notifier(client.deliver, runtime.report, runtime.wake))
    return services
