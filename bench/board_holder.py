"""Hold every board of a home open, as a Hermes Agent gateway with `dispatch_in_gateway: true` does.

Such a gateway keeps a connection to every board database between dispatcher ticks. This
script models that with one SQLite connection per board in WAL mode, plus one read so that
SQLite opens the `-wal` and `-shm` files too. It prints `holding N boards` once they are
open, then waits for SIGTERM.

NOTE: this is a model of Hermes Agent's gateway, not Hermes Agent itself, which is not
installed here. It counts one connection per board; a gateway holding more would count more.

    python -m bench.board_holder --home ROOT
"""

from __future__ import annotations

import argparse
import signal
import sqlite3
import sys

from kanban.home import Home


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.board_holder", description=__doc__.splitlines()[0])
    parser.add_argument("--home", required=True, help="root of the Hermes home")
    arguments = parser.parse_args(argv)

    home = Home.resolve(arguments.home)
    connections = []
    for slug in home.board_slugs():
        connection = sqlite3.connect(str(home.board_path(slug)), timeout=5.0, isolation_level=None)
        connection.execute("PRAGMA journal_mode = WAL")
        connection.execute("SELECT count(*) FROM tasks").fetchone()
        connections.append(connection)
    print(f"holding {len(connections)} boards", flush=True)

    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(0))
    signal.pause()
    return 0


if __name__ == "__main__":
    sys.exit(main())
