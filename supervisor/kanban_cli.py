"""`hermesd kanban ...`: the board commands that users and workers run."""

from __future__ import annotations

import typer

kanban_app = typer.Typer(help="Work with the kanban boards of the home.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(kanban_app, name="kanban")
