"""The control socket: one JSON request line in, one JSON response line out.

The socket file is created with mode 0600 and the server checks each peer's uid
(`SO_PEERCRED`), so only the account that runs hermesd, or root, can control it.
Unix socket paths are limited to about 107 bytes; a longer path is reached through
`/proc/self/fd/<directory fd>/<name>`, which is short whatever the directory.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# sizeof(sockaddr_un.sun_path) is 108 on Linux, including the terminating NUL.
MAX_SOCKET_PATH = 107
MAX_MESSAGE_BYTES = 1024 * 1024


class ControlError(Exception):
    """The supervisor cannot be reached, or answered with an error."""


@contextmanager
def _short_path(path: Path) -> Iterator[str]:
    """Yield a path to `path` short enough for a unix socket address."""
    if len(os.fsencode(str(path))) <= MAX_SOCKET_PATH:
        yield str(path)
        return
    directory_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{directory_fd}/{path.name}"
    finally:
        os.close(directory_fd)


def bind_control_socket(path: Path) -> socket.socket:
    """Bind and listen on the control socket, replacing a stale socket file left by a crash."""
    path.unlink(missing_ok=True)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        with _short_path(path) as address:
            server.bind(address)
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o600)
    server.listen(16)
    server.setblocking(False)
    return server


def peer_uid(connection: socket.socket) -> int:
    credentials = connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", credentials)
    return uid


def peer_is_allowed(connection: socket.socket) -> bool:
    uid = peer_uid(connection)
    return uid in (os.getuid(), 0)


def read_message(connection: socket.socket) -> dict[str, Any]:
    """Read one JSON line from a blocking socket."""
    buffer = b""
    while not buffer.endswith(b"\n"):
        chunk = connection.recv(65536)
        if not chunk:
            break
        buffer += chunk
        if len(buffer) > MAX_MESSAGE_BYTES:
            raise ControlError("control message too large")
    if not buffer.strip():
        raise ControlError("empty control message")
    try:
        message = json.loads(buffer)
    except ValueError as error:
        raise ControlError(f"invalid control message: {error}") from error
    if not isinstance(message, dict):
        raise ControlError("invalid control message: expected a JSON object")
    return message


def send_message(connection: socket.socket, message: dict[str, Any]) -> None:
    connection.sendall(json.dumps(message, default=str).encode() + b"\n")


def request(path: Path, command: str, timeout: float = 10.0, **arguments: Any) -> dict[str, Any]:
    """Send one command to the supervisor and return its response; raise ControlError when unreachable."""
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.settimeout(timeout)
    try:
        with _short_path(path) as address:
            client.connect(address)
        send_message(client, {"command": command, **arguments})
        response = read_message(client)
    except (OSError, ControlError) as error:
        raise ControlError(f"cannot reach the supervisor at {path}: {error}") from error
    finally:
        client.close()

    if not response.get("ok", False):
        raise ControlError(response.get("error", "the supervisor rejected the request"))
    return response
