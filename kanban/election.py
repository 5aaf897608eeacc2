"""The election lock: an exclusive `flock` on `<kanban root>/kanban/.dispatcher.lock`.

Hermes Agent's own gateways take the same lock on the same file, so a hermesd gateway and
a Hermes gateway never both dispatch. The holder is the leader for as long as its process
lives; the kernel releases the lock when the process dies, however it dies.

The lock is held through py-filelock's native Unix lock (never its soft lock, and the file
is never deleted). A standby waits for it in the kernel: a blocking `flock` on a second
descriptor of the same file returns the moment the holder lets go. The standby then drops
that probe and takes the lock through py-filelock without waiting, so whichever candidate
wins, the kernel decides and there is never more than one holder.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import socket
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import filelock
import psutil

from kanban.jsonfile import read_json_object, write_json_atomically

log = logging.getLogger(__name__)

LOCK_MODE = 0o600


class LockPathError(Exception):
    """The lock path cannot be used safely (a symlink, not a regular file, or not openable)."""


@dataclass(frozen=True)
class LockHolder:
    """A process that holds the lock according to the kernel's lock table."""

    pid: int
    inode: int


def _open_lock_file(path: Path) -> int:
    """Open (creating with mode 0600) the lock file without following a symlink at its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, LOCK_MODE)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise LockPathError(f"{path} is a symlink; the election lock must be a regular file. "
                                f"Remove the symlink (`rm {path}`) and hermesd recreates the file") from error
        raise LockPathError(f"{path}: cannot open the election lock: {error.strerror}") from error

    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise LockPathError(f"{path} is not a regular file; move it away so that hermesd can create the lock")
    return fd


def path_identity(path: Path) -> tuple[int, int] | None:
    """Device and inode that `path` names now (without following a symlink), or None when it is missing."""
    try:
        result = os.lstat(path)
    except FileNotFoundError:
        return None
    return result.st_dev, result.st_ino


class LeaderLock:
    """The election lock as one candidate sees it: wait for it, hold it, check it, release it."""

    def __init__(self, path: Path):
        self.path = path
        self._lock = filelock.UnixFileLock(
            str(path),
            mode=LOCK_MODE,
            blocking=False,
            fallback_to_soft=False,
            preserve_lock_file=True,
            thread_local=False,
        )
        self._identity: tuple[int, int] | None = None

    @property
    def is_held(self) -> bool:
        return self._lock.is_locked

    @property
    def identity(self) -> tuple[int, int] | None:
        """Device and inode of the file this candidate holds the lock on."""
        return self._identity

    def try_acquire(self) -> bool:
        """Take the lock if it is free now; never waits."""
        fd = _open_lock_file(self.path)
        try:
            identity = (os.fstat(fd).st_dev, os.fstat(fd).st_ino)
        finally:
            os.close(fd)

        try:
            self._lock.acquire(blocking=False)
        except filelock.Timeout:
            return False

        held_fd = self._lock._context.lock_file_fd  # noqa: SLF001 - the descriptor py-filelock holds
        held = os.fstat(held_fd)
        self._identity = (held.st_dev, held.st_ino)
        if self._identity != identity or path_identity(self.path) != self._identity:
            # The file was replaced between our open and py-filelock's; the lock we hold is on a stale inode.
            self.release()
            return False
        return True

    def wait_until_free(self, stop: threading.Event | None = None) -> None:
        """Block in the kernel until the lock on the file the path names now is free.

        Returns right after the lock was free for an instant; the caller must still win
        `try_acquire()`. A stale wait (the file was replaced while waiting) returns too.
        """
        fd = _open_lock_file(self.path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def still_names_held_file(self) -> bool:
        """True while the lock path still names the inode whose lock this candidate holds."""
        return self._identity is not None and path_identity(self.path) == self._identity

    def release(self) -> None:
        if self._lock.is_locked:
            self._lock.release()
        self._identity = None


# Owner record

def write_owner_record(path: Path, record: dict[str, Any]) -> None:
    """Write the owner record beside the lock, atomically and with mode 0600."""
    write_json_atomically(path, record)


def read_owner_record(path: Path) -> dict[str, Any] | None:
    return read_json_object(path)


def owner_record(profile: str, epoch: int) -> dict[str, Any]:
    process = psutil.Process()
    return {
        "profile": profile,
        "pid": process.pid,
        "start_time": process.create_time(),
        "host": socket.gethostname(),
        "epoch": epoch,
        "since": time.time(),
    }


# The kernel's lock table

def _parse_proc_locks(text: str) -> list[tuple[str, int, int, int, int]]:
    """Parse /proc/locks into (kind, pid, major, minor, inode) for granted locks."""
    entries = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 8 or fields[1] == "->":
            continue  # a waiter ("->") holds nothing
        kind, pid_text, device = fields[1], fields[4], fields[5]
        try:
            major, minor, inode = device.split(":")
            entries.append((kind, int(pid_text), int(major, 16), int(minor, 16), int(inode)))
        except ValueError:
            continue
    return entries


def lock_holders(path: Path) -> list[LockHolder]:
    """Pids that hold a lock on the file `path` names, read from the kernel's lock table (/proc/locks).

    The pid is the process that took the lock. A process that inherited the descriptor
    is not listed. hermesd's own lock descriptor is never inherited: it is close-on-exec, and py-filelock
    closes it in forked children.
    """
    identity = path_identity(path)
    if identity is None:
        return []
    device, inode = identity
    try:
        text = Path("/proc/locks").read_text()
    except OSError:
        return []

    holders = []
    for kind, pid, major, minor, locked_inode in _parse_proc_locks(text):
        if locked_inode != inode or kind not in ("FLOCK", "POSIX", "OFDLCK"):
            continue
        if (major, minor) != (os.major(device), os.minor(device)):
            continue
        holders.append(LockHolder(pid=pid, inode=inode))
    return holders


# Network filesystems

NETWORK_FILESYSTEMS = {
    "nfs", "nfs4", "cifs", "smb", "smb2", "smbfs", "smb3", "ncpfs", "afs", "coda", "9p", "ceph", "glusterfs",
    "lustre", "gpfs", "beegfs", "fuse.sshfs", "fuse.rclone", "fuse.s3fs", "fuse.gcsfuse", "fuse.glusterfs",
    "fuse.cephfs", "fuse.juicefs", "fuse.davfs", "davfs",
}


def filesystem_type(path: Path) -> str | None:
    """Return the type of the mount that contains `path`, from the longest matching mount point in /proc/self/mounts."""
    try:
        resolved = str(path.resolve())
        text = Path("/proc/self/mounts").read_text()
    except OSError:
        return None

    best_point, best_type = "", None
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        inside = resolved == point or resolved.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best_point):
            best_point, best_type = point, fields[2]
    return best_type


def network_filesystem(path: Path) -> str | None:
    """Return the mount type when `path` is on a network filesystem, else None."""
    kind = filesystem_type(path)
    if kind is None:
        return None
    if kind in NETWORK_FILESYSTEMS or kind.startswith(("nfs", "cifs", "smb")):
        return kind
    return None
