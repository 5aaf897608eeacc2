"""Processes that gateways leave behind: adopting them (Linux subreaper) and stopping them."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

import psutil

log = logging.getLogger(__name__)

PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> None:
    """Adopt orphaned descendants (Linux), so that processes a gateway leaves behind can be found and stopped."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        log.warning("prctl(PR_SET_CHILD_SUBREAPER) failed: %s", os.strerror(ctypes.get_errno()))


def kill_descendants(grace_seconds: float) -> None:
    """Stop every descendant of this process: SIGTERM, then SIGKILL to those alive after `grace_seconds`.

    The caller reaps them afterwards; as a subreaper it is their parent.
    """
    try:
        leftovers = psutil.Process().children(recursive=True)
    except psutil.Error:
        return
    if not leftovers:
        return

    log.info("stopping %d process(es) left behind by gateways: %s", len(leftovers),
             ", ".join(str(process.pid) for process in leftovers))
    for process in leftovers:
        try:
            process.terminate()
        except psutil.Error:
            pass
    _gone, alive = psutil.wait_procs(leftovers, timeout=grace_seconds)

    for process in alive:
        try:
            process.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=grace_seconds)
