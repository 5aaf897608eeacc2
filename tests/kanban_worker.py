"""A stand-in worker for the kanban tests: `python kanban_worker.py OUT_DIR MODE TASK_ID`.

Each start appends one JSON line (pid, attempt, the HERMES_* environment) to
`OUT_DIR/TASK_ID.starts`, then behaves as MODE says:

- `ok`: print two lines and exit 0.
- `exit3`: exit 3.
- `rate-then-ok`: exit 75 on the first start, 0 afterwards.
- `rate-limited`: exit 75 on every start.
- `sleep`: sleep 60 s (the tests stop it).
- `stubborn`: ignore SIGTERM and sleep 60 s.
- `kill-then-ok`: sleep 60 s on the first start, exit 0 afterwards.
- `slow-ok`: sleep 4 s, then exit 0.
- `complete-self`: run `hermesd kanban complete --result self` with the environment it got, then exit 0.
- `complete-then-linger`: complete its task like `complete-self`, then sleep 60 s. On SIGTERM it
  appends the time to `OUT_DIR/TASK_ID.sigterm` and exits 143.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def main() -> int:
    out_dir, mode, task_id = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    starts = out_dir / f"{task_id}.starts"
    attempt = len(starts.read_text().splitlines()) + 1 if starts.exists() else 1
    environment = {key: value for key, value in os.environ.items() if key.startswith("HERMES")}
    with open(starts, "a", encoding="utf-8") as handle:
        handle.write(json.dumps({"pid": os.getpid(), "attempt": attempt, "time": time.time(),
                                 "env": environment}) + "\n")

    if mode == "ok":
        print(f"working on {task_id}")
        print(f"finished {task_id}")
        return 0
    if mode == "exit3":
        return 3
    if mode == "rate-then-ok":
        return 75 if attempt == 1 else 0
    if mode == "rate-limited":
        return 75
    if mode == "stubborn":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        time.sleep(60)
        return 0
    if mode == "sleep" or (mode == "kill-then-ok" and attempt == 1):
        time.sleep(60)
        return 0
    if mode == "slow-ok":
        time.sleep(4)
        return 0
    if mode in ("complete-self", "complete-then-linger"):
        result = subprocess.run([sys.executable, "-m", "supervisor", "kanban", "complete", "--result", "self"],
                                capture_output=True, text=True)
        print(result.stdout, result.stderr, flush=True)
        if mode == "complete-self" or result.returncode != 0:
            return result.returncode
        signal.signal(signal.SIGTERM, lambda _signum, _frame: record_sigterm(out_dir / f"{task_id}.sigterm"))
        time.sleep(60)
    return 0


def record_sigterm(path: Path) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(f"{time.time()}\n")
    sys.exit(143)


if __name__ == "__main__":
    sys.exit(main())
