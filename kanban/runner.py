"""The wrapper process around one worker: `python -m kanban.runner --log L --status S --pid-file P -- CMD...`.

The dispatcher starts this wrapper in a session of its own, and the wrapper starts
the real worker command (never through a shell). The wrapper copies the worker's
output into the per-task log, rotating it past `--max-log-bytes` with one backup,
as Hermes does, and when the worker ends writes its exit status, with the tail of
its output, atomically to the `--status` file. The dispatcher records the wrapper's
pid and start time, so a new leader after a failover, which is not the wrapper's
parent, can still tell whether the worker lives and learn how it ended.

The wrapper imports only the standard library, so it starts fast.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from kanban.jsonfile import write_json_atomically

DEFAULT_MAX_LOG_BYTES = 2 * 1024 * 1024
TAIL_BYTES = 4096
READ_CHUNK = 65536

# How long the wrapper keeps copying output after the worker exited, for
# grandchildren that still hold the output pipe open.
DRAIN_SECONDS = 2.0

# Exit status of the wrapper when the command could not be started (as a shell reports it).
EXIT_NOT_STARTED = 127


class CappedLog:
    """An append-only log file that moves itself to `<name>.1` when it grows past `max_bytes`."""

    def __init__(self, path: Path, max_bytes: int):
        self.path = path
        self.max_bytes = max_bytes
        self.tail = bytearray()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._rotate_if_full()
        self._file = open(path, "ab")

    def _rotate_if_full(self) -> None:
        try:
            if self.path.stat().st_size >= self.max_bytes:
                os.replace(self.path, self.path.with_name(self.path.name + ".1"))
        except FileNotFoundError:
            pass

    def write(self, data: bytes) -> None:
        self.tail.extend(data)
        del self.tail[:-TAIL_BYTES]
        self._file.write(data)
        self._file.flush()
        if self._file.tell() >= self.max_bytes:
            self._file.close()
            self._rotate_if_full()
            self._file = open(self.path, "ab")

    def close(self) -> None:
        self._file.close()


def copy_output(stream, log: CappedLog) -> None:
    fd = stream.fileno()
    while True:
        data = os.read(fd, READ_CHUNK)
        if not data:
            return
        log.write(data)


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m kanban.runner")
    parser.add_argument("--log", required=True, type=Path, help="per-task log file")
    parser.add_argument("--status", required=True, type=Path, help="file that receives the exit status (JSON)")
    parser.add_argument("--pid-file", required=True, type=Path, help="file that receives this wrapper's pid")
    parser.add_argument("--max-log-bytes", type=int, default=DEFAULT_MAX_LOG_BYTES, help="log size cap in bytes")
    parser.add_argument("command", nargs="+", help="the worker command and its arguments")
    return parser.parse_args(argv)


def run(arguments: argparse.Namespace) -> int:
    write_json_atomically(arguments.pid_file, {"pid": os.getpid(), "time": time.time()})
    log = CappedLog(arguments.log, arguments.max_log_bytes)
    started = time.time()
    header = f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} hermesd worker: {' '.join(arguments.command)}\n"
    log.write(header.encode())
    log.tail.clear()

    try:
        worker = subprocess.Popen(arguments.command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT)
    except OSError as error:
        message = f"cannot start {arguments.command[0]!r}: {error.strerror or error}"
        log.write(f"hermesd: {message}\n".encode())
        log.close()
        write_json_atomically(arguments.status, {
            "spawn_error": message, "errno": error.errno, "exit_code": None, "signal": None,
            "started_at": started, "ended_at": time.time(), "tail": "",
        })
        return EXIT_NOT_STARTED

    def forward(signum: int, _frame: object) -> None:
        try:
            worker.send_signal(signum)
        except OSError:
            pass

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)

    reader = threading.Thread(target=copy_output, args=(worker.stdout, log), daemon=True)
    reader.start()
    returncode = worker.wait()
    reader.join(DRAIN_SECONDS)
    tail = bytes(log.tail).decode("utf-8", errors="replace")
    log.close()

    write_json_atomically(arguments.status, {
        "exit_code": returncode if returncode >= 0 else None,
        "signal": -returncode if returncode < 0 else None,
        "started_at": started,
        "ended_at": time.time(),
        "tail": tail,
    })
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(parse_arguments(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
