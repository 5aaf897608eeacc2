"""The gateway: one long-running child process per profile, started by the supervisor."""
