"""The wrapper process around one worker: `python -m kanban.runner --log L --status S --pid-file P -- CMD...`.

The dispatcher starts this wrapper in a session of its own, and the wrapper starts
the real worker command (never through a shell). The wrapper copies the worker's
output into the per-task log, rotating it past `--max-log-bytes` with one backup,
as Hermes does, and when the worker ends writes its exit status, with the tail of
its output, atomically to the `--status` file. The dispatcher records the wrapper's
pid and start time, so a new leader after a failover, which is not the wrapper's
parent, can still tell whether the worker lives and learn how it ended.

SIGTERM, SIGINT and SIGHUP sent to the wrapper are forwarded to its process group,
which contains the worker and the worker's own children. SIGTERM and SIGINT also mark
the run as interrupted from outside (`interrupted_by_signal` in the status file),
which the dispatcher treats as a shutdown, not as a failure of the task. The
wrapper writes that mark at once, before the worker has ended, so it survives a
SIGKILL that follows the SIGTERM (as at `hermesd down`).

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

# Signals that the wrapper forwards to the worker; the interrupting ones also mark the run as interrupted.
INTERRUPTING_SIGNALS = (signal.SIGTERM, signal.SIGINT)
FORWARDED_SIGNALS = (*INTERRUPTING_SIGNALS, signal.SIGHUP)


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


class SignalForwarder:
    """Forward signals to the wrapper's process group, and remember the first interrupting one."""

    def __init__(self, status_file: Path, started: float):
        self.status_file = status_file
        self.started = started
        self.interrupted_by: int | None = None
        self.worker: subprocess.Popen[bytes] | None = None
        # Set before the wrapper writes its final status, so a late signal does not overwrite it.
        self.finishing = False

    def install(self) -> None:
        for signum in FORWARDED_SIGNALS:
            signal.signal(signum, self.handle)

    def handle(self, signum: int, _frame: object) -> None:
        if signum in INTERRUPTING_SIGNALS and self.interrupted_by is None and self.worker_running():
            self.interrupted_by = signum
            write_json_atomically(self.status_file, {
                "exit_code": None, "signal": None, "interrupted_by_signal": signum, "started_at": self.started,
                "ended_at": None, "tail": "",
            })
        self.forward(signum)

    def worker_running(self) -> bool:
        """True until the worker has ended (or before it started); a signal after that interrupts nothing."""
        return not self.finishing and (self.worker is None or self.worker.returncode is None)

    def forward(self, signum: int) -> None:
        if os.getpgrp() != os.getpid():
            # Not a group leader (started without a session of its own): signal the worker alone.
            if self.worker is not None:
                try:
                    self.worker.send_signal(signum)
                except OSError:
                    pass
            return
        # The wrapper is in its own group too; ignore the signal while sending it, so it does not loop.
        previous = signal.signal(signum, signal.SIG_IGN)
        try:
            os.killpg(os.getpid(), signum)
        except OSError:
            pass
        finally:
            signal.signal(signum, previous)


def run(arguments: argparse.Namespace) -> int:
    started = time.time()
    forwarder = SignalForwarder(arguments.status, started)
    forwarder.install()
    write_json_atomically(arguments.pid_file, {"pid": os.getpid(), "time": time.time()})
    log = CappedLog(arguments.log, arguments.max_log_bytes)
    header = f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} hermesd worker: {' '.join(arguments.command)}\n"
    log.write(header.encode())
    log.tail.clear()

    if forwarder.interrupted_by is not None:
        forwarder.finishing = True
        log.write(f"hermesd: interrupted by signal {forwarder.interrupted_by} before the worker started\n".encode())
        log.close()
        write_json_atomically(arguments.status, {
            "exit_code": None, "signal": None, "interrupted_by_signal": forwarder.interrupted_by,
            "started_at": started, "ended_at": time.time(), "tail": "",
        })
        return 0

    try:
        worker = subprocess.Popen(arguments.command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT)
    except OSError as error:
        forwarder.finishing = True
        message = f"cannot start {arguments.command[0]!r}: {error.strerror or error}"
        log.write(f"hermesd: {message}\n".encode())
        log.close()
        write_json_atomically(arguments.status, {
            "spawn_error": message, "errno": error.errno, "exit_code": None, "signal": None,
            "started_at": started, "ended_at": time.time(), "tail": "",
        })
        return EXIT_NOT_STARTED
    forwarder.worker = worker

    reader = threading.Thread(target=copy_output, args=(worker.stdout, log), daemon=True)
    reader.start()
    returncode = worker.wait()
    forwarder.finishing = True
    reader.join(DRAIN_SECONDS)
    tail = bytes(log.tail).decode("utf-8", errors="replace")
    log.close()

    write_json_atomically(arguments.status, {
        "exit_code": returncode if returncode >= 0 else None,
        "signal": -returncode if returncode < 0 else None,
        "interrupted_by_signal": forwarder.interrupted_by,
        "started_at": started,
        "ended_at": time.time(),
        "tail": tail,
    })
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(parse_arguments(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
