"""Wait until circusd reports every named watcher active; print that wall-clock time as JSON.

Run by the peers' Python (`bench/.peers-venv/bin/python -I bench/circus_ready.py`), because
circus is installed only there. It polls circusd's `status` command every POLL_SECONDS, the
interval the benchmark uses for the other supervisors, so the time it prints is as precise
as theirs. It prints `{"ready_at": EPOCH_SECONDS}` and exits 0, or prints the last
statuses or error and exits 1 after TIMEOUT seconds. It imports nothing from hermesd.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from circus.client import CircusClient
from circus.exc import CallError

POLL_SECONDS = 0.05


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoint", required=True, help="circusd's control endpoint, such as ipc:///PATH")
    parser.add_argument("--timeout", type=float, required=True, help="seconds to wait before giving up")
    parser.add_argument("names", nargs="+", help="watcher names that must all be active")
    arguments = parser.parse_args()

    client = CircusClient(endpoint=arguments.endpoint, timeout=2.0)
    deadline = time.monotonic() + arguments.timeout
    last: object = None
    try:
        while time.monotonic() < deadline:
            try:
                statuses = client.call({"command": "status", "properties": {}}).get("statuses") or {}
            except (CallError, OSError) as error:  # circusd has not bound its endpoint yet
                last = repr(error)
            else:
                last = statuses
                if all(statuses.get(name) == "active" for name in arguments.names):
                    print(json.dumps({"ready_at": time.time()}), flush=True)
                    return 0
            time.sleep(POLL_SECONDS)
    finally:
        client.stop()
    print(json.dumps({"timeout": arguments.timeout, "last": last}), flush=True)
    return 1


if __name__ == "__main__":
    sys.exit(main())
