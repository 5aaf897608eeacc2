"""The services a leader runs on every pass (the dispatcher, the notifier), built when it takes over."""

from __future__ import annotations

from gateway.leader import LeaderRuntime, LeaderService


def leader_services(runtime: LeaderRuntime) -> list[LeaderService]:
    """Build the leader's services; each gets the runtime (home, boards, epoch, wake event)."""
    services: list[LeaderService] = []
    return services
