"""Kanban boards of a Hermes home: layout, profile settings, board storage and the election lock.

Nothing in this package knows about the supervisor: gateways and the CLI use it.
"""
