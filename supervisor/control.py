"""The control socket: one JSON request line in, one JSON response line out.

The socket file is created with mode 0600 and the server checks each peer's uid
(`SO_PEERCRED`), so only the account that runs hermesd, or root, can control it.
Unix socket paths are limited to about 107 bytes; a longer path is reached through
`/proc/self/fd/<directory fd>/<name>`, which is short whatever the directory.
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.unix import bind_private_socket, peer_is_allowed, peer_uid, short_path

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 1024 * 1024


class ControlError(Exception):
    """The supervisor cannot be reached, or responded with an error."""


def bind_control_socket(path: Path) -> socket.socket:
    """Bind and listen on the control socket, replacing a stale socket file left by a crash."""
    server = bind_private_socket(path)
    server.setblocking(False)
    return server


def read_message(connection: socket.socket) -> dict[str, Any]:
    """Read one JSON line from a blocking socket."""
    buffer = b""
    while not buffer.endswith(b"\n"):
        chunk = connection.recv(65536)
        if not chunk:
            break
        buffer += chunk
        if len(buffer) > MAX_MESSAGE_BYTES:
            raise ControlError(f"control message larger than {MAX_MESSAGE_BYTES} bytes")
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
        with short_path(path) as address:
            client.connect(address)
        send_message(client, {"command": command, **arguments})
        response = read_message(client)
    except (OSError, ControlError) as error:
        if isinstance(error, TimeoutError):
            raise ControlError(f"the supervisor at {path} did not respond within {timeout:g} s; it may still "
                               "carry out the request, so check `hermesd status`") from error
        raise ControlError(f"cannot reach the supervisor at {path}: {error}") from error
    finally:
        client.close()

    if not response.get("ok", False):
        raise ControlError(response.get("error", "the supervisor rejected the request"))
    return response


def serve_one_request(server: socket.socket, handler: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    """Accept one connection on a listening socket, check the peer's uid, and send the response `handler` returns."""
    try:
        connection, _address = server.accept()
    except BlockingIOError:
        return
    with connection:
        connection.settimeout(2.0)
        try:
            if not peer_is_allowed(connection):
                log.warning("rejected a control connection from uid %d", peer_uid(connection))
                send_message(connection, {"ok": False, "error": "permission denied: the control socket "
                                          "accepts only the account that runs the supervisor"})
                return
            send_message(connection, handler(read_message(connection)))
        except (OSError, ControlError) as error:
            log.warning("control request failed: %s", error)
