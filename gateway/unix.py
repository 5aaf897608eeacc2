"""Unix socket helpers shared by the supervisor's control socket and the gateways' delivery sockets.

Unix socket paths are limited to about 107 bytes; a longer path is reached through
`/proc/self/fd/<directory fd>/<name>`, which is short whatever the directory.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# sizeof(sockaddr_un.sun_path) is 108 on Linux, including the terminating NUL.
MAX_SOCKET_PATH = 107


@contextmanager
def short_path(path: Path) -> Iterator[str]:
    """Yield a path to `path` short enough for a unix socket address."""
    if len(os.fsencode(str(path))) <= MAX_SOCKET_PATH:
        yield str(path)
        return
    directory_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{directory_fd}/{path.name}"
    finally:
        os.close(directory_fd)


def bind_private_socket(path: Path, backlog: int = 16) -> socket.socket:
    """Bind and listen on a stream socket file with mode 0600, replacing a stale file left by a crash."""
    path.unlink(missing_ok=True)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        with short_path(path) as address:
            server.bind(address)
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o600)
    server.listen(backlog)
    return server


def connect(path: Path, timeout: float) -> socket.socket:
    """Connect to the stream socket at `path`; raise OSError when no server listens there."""
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.settimeout(timeout)
    try:
        with short_path(path) as address:
            client.connect(address)
    except BaseException:
        client.close()
        raise
    return client


def peer_uid(connection: socket.socket) -> int:
    credentials = connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", credentials)
    return uid


def peer_is_allowed(connection: socket.socket) -> bool:
    """Accept only peers running as this process's user, or root."""
    return peer_uid(connection) in (os.getuid(), 0)
