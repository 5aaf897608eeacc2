"""The gateway's delivery socket: the leader hands it notifications, it sends them through an adapter.

Protocol: one JSON object per line on a unix stream socket (`<run-dir>/<profile>.sock`,
mode 0600, peers of other users rejected). A request is
`{"type": "deliver", "message": {"id": ..., "platform": ..., "chat_id": ..., "text": ...}}`;
the response is `{"ok": true, "id": ..., "duplicate": false}` once the message was sent and its
id recorded, or `{"ok": false, "id": ..., "reason": ..., "error": ...}` with a reason from
kanban.notifier (`not_configured`, `permanent`, `temporary`, `invalid`).

Exactly once: the id is written to the delivered-ids file and fsynced after the adapter
returns and before the answer, so a resend (the leader crashed, or the answer was lost)
is answered `duplicate` without a second send. One lock serializes sends, so a resend
that arrives while the first send is still retrying waits for it and then sees its id.
A gateway killed between the adapter's return and the fsync loses the record, and the
message goes out twice. No platform here offers an idempotency key to close that gap.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.adapters import missing_platform_reason, profile_secrets
from gateway.adapters.base import Adapter, Settings
from gateway.adapters.http import SendError, redact
from gateway.unix import bind_private_socket, connect, peer_is_allowed
from kanban.notifier import (REASON_GATEWAY_DOWN, REASON_INVALID, REASON_NOT_CONFIGURED, REASON_TEMPORARY,
                             Ack)

log = logging.getLogger(__name__)

MAX_LINE_BYTES = 1024 * 1024
# How long the leader waits for a response: more than an adapter's worst case (5 tries of
# up to 10 s each, and 4 waits of up to 30 s between them), so a slow platform is not
# mistaken for a lost response.
CLIENT_TIMEOUT_SECONDS = 180.0
# Delivered ids kept on disk; the leader moves its cursor right after the response, so only
# the most recent ids can ever be resent.
KEEP_IDS = 10000
# Test hook: seconds to wait between recording a message as delivered and answering.
PAUSE_BEFORE_ACK_VARIABLE = "HERMESD_TEST_PAUSE_BEFORE_ACK"


def socket_path(run_dir: Path, profile: str) -> Path:
    return run_dir / f"{profile}.sock"


def delivered_ids_path(run_dir: Path, profile: str) -> Path:
    return run_dir / f"{profile}.delivered"


class DeliveredIds:
    """The ids of delivered messages, one per line in an append-only file that is fsynced per id."""

    def __init__(self, path: Path, keep: int = KEEP_IDS):
        self.path = path
        self.keep = keep
        self.ids: list[str] = []
        self._set: set[str] = set()
        self._load()

    def _load(self) -> None:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return
        # A crash in the middle of an append leaves a torn last line: drop it, or the next
        # id would be glued to it.
        complete, _, torn = data.rpartition(b"\n")
        if torn:
            with open(self.path, "r+b") as handle:
                handle.truncate(len(complete) + 1 if complete else 0)
        self.ids = [line for line in complete.decode(errors="replace").split("\n") if line]
        self._set = set(self.ids)

    def __contains__(self, message_id: str) -> bool:
        return message_id in self._set

    def add(self, message_id: str) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, (message_id + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        self.ids.append(message_id)
        self._set.add(message_id)
        if len(self.ids) > 2 * self.keep:
            self._compact()

    def _compact(self) -> None:
        self.ids = self.ids[-self.keep:]
        self._set = set(self.ids)
        temporary = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, "".join(message_id + "\n" for message_id in self.ids).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, self.path)


class DeliveryServer:
    """Accepts notifications from the leader on the profile's delivery socket."""

    def __init__(self, run_dir: Path, settings: Settings, adapters: dict[str, Adapter]):
        self.path = socket_path(run_dir, settings.profile)
        self.settings = settings
        self.adapters = adapters
        # Adapters redact these from their errors already; the server redacts again whatever it
        # logs or answers, so an adapter that misses one, or crashes, cannot leak it.
        self.secrets = profile_secrets(settings)
        self.delivered = DeliveredIds(delivered_ids_path(run_dir, settings.profile))
        self.pause_before_ack = float(os.environ.get(PAUSE_BEFORE_ACK_VARIABLE) or 0)
        self._send_lock = threading.Lock()
        self._server: socket.socket | None = None
        self._stopped = threading.Event()

    def start(self) -> None:
        self._server = bind_private_socket(self.path)
        threading.Thread(target=self._accept_loop, name="delivery", daemon=True).start()
        log.info("delivery socket %s listening; platforms: %s", self.path, ", ".join(sorted(self.adapters)))

    def stop(self) -> None:
        self._stopped.set()
        if self._server is not None:
            self._server.close()
            self._server = None
            self.path.unlink(missing_ok=True)
            log.info("delivery socket %s closed", self.path)

    def _accept_loop(self) -> None:
        server = self._server
        while server is not None and not self._stopped.is_set():
            try:
                connection, _address = server.accept()
            except OSError:
                if not self._stopped.is_set():
                    log.exception("delivery socket %s failed; no more notifications are accepted", self.path)
                return
            threading.Thread(target=self._serve, args=(connection,), name="delivery-connection",
                             daemon=True).start()

    def _serve(self, connection: socket.socket) -> None:
        with connection:
            if not peer_is_allowed(connection):
                log.warning("rejected a delivery connection from another user")
                return
            reader = connection.makefile("rb")
            for line in reader:
                if len(line) > MAX_LINE_BYTES:
                    return
                answer = self.handle_line(line)
                try:
                    connection.sendall(json.dumps(answer).encode() + b"\n")
                except OSError as error:
                    log.warning("cannot send the response for message %s to the leader: %s", answer.get("id"), error)
                    return

    def handle_line(self, line: bytes) -> dict[str, Any]:
        try:
            request = json.loads(line)
            message = request["message"]
            message_id = str(message["id"])
            platform = str(message["platform"]).lower()
        except (ValueError, KeyError, TypeError) as error:
            return {"ok": False, "id": None, "reason": REASON_INVALID, "error": f"invalid delivery request: {error!r}"}
        return self.deliver(message_id, platform, message)

    def deliver(self, message_id: str, platform: str, message: dict[str, Any]) -> dict[str, Any]:
        adapter = self.adapters.get(platform)
        if adapter is None:
            reason = missing_platform_reason(self.settings, platform)
            return {"ok": False, "id": message_id, "reason": REASON_NOT_CONFIGURED, "error": reason}

        with self._send_lock:
            if message_id in self.delivered:
                log.info("message %s was delivered before; acknowledging without sending again", message_id)
                return {"ok": True, "id": message_id, "duplicate": True}
            started = time.monotonic()
            try:
                adapter.send(message)
            except SendError as error:
                error_text = redact(str(error), self.secrets)
                log.warning("cannot send message %s (task %s) to %s chat %s: %s", message_id,
                            message.get("task_id"), platform, message.get("chat_id"), error_text)
                answer: dict[str, Any] = {"ok": False, "id": message_id, "reason": error.kind, "error": error_text}
                if error.retry_after is not None:
                    answer["retry_after"] = error.retry_after
                return answer
            except Exception as error:  # noqa: BLE001 - an adapter bug must not kill the socket
                # The traceback's exception text can quote a secret, so it is logged redacted.
                log.error("adapter %s failed on message %s:\n%s", platform, message_id,
                          redact("".join(traceback.format_exception(error)).rstrip(), self.secrets))
                return {"ok": False, "id": message_id, "reason": REASON_TEMPORARY,
                        "error": f"{platform}: adapter error {error.__class__.__name__}"}
            self.delivered.add(message_id)

        log.info("sent message %s (task %s, %s) to %s chat %s in %.0f ms", message_id, message.get("task_id"),
                 message.get("kind"), platform, message.get("chat_id"), (time.monotonic() - started) * 1000)
        if self.pause_before_ack:
            log.warning("test hook %s: waiting %g s before acknowledging message %s", PAUSE_BEFORE_ACK_VARIABLE,
                        self.pause_before_ack, message_id)
            time.sleep(self.pause_before_ack)
        return {"ok": True, "id": message_id, "duplicate": False}


class DeliveryClient:
    """The leader's side: hands one message to the gateway of a profile and returns its answer."""

    def __init__(self, run_dir: Path, timeout: float = CLIENT_TIMEOUT_SECONDS,
                 connector: Callable[[Path, float], socket.socket] = connect):
        self.run_dir = run_dir
        self.timeout = timeout
        self.connector = connector

    def deliver(self, profile: str, message: dict[str, Any]) -> Ack:
        path = socket_path(self.run_dir, profile)
        try:
            connection = self.connector(path, self.timeout)
        except (FileNotFoundError, ConnectionRefusedError):
            return {"ok": False, "reason": REASON_GATEWAY_DOWN,
                    "error": f"gateway {profile} is not running (nothing listens on {path})"}
        except OSError as error:
            return {"ok": False, "reason": REASON_GATEWAY_DOWN,
                    "error": f"cannot connect to gateway {profile} at {path}: {error}"}

        with connection:
            try:
                connection.sendall(json.dumps({"type": "deliver", "message": message}).encode() + b"\n")
                line = connection.makefile("rb").readline(MAX_LINE_BYTES)
            except OSError as error:
                return {"ok": False, "reason": REASON_TEMPORARY,
                        "error": f"gateway {profile} did not answer: {error}"}
        if not line:
            return {"ok": False, "reason": REASON_GATEWAY_DOWN,
                    "error": f"gateway {profile} closed the connection before answering"}
        try:
            answer = json.loads(line)
        except ValueError:
            return {"ok": False, "reason": REASON_TEMPORARY, "error": f"gateway {profile} sent an invalid answer"}
        if not isinstance(answer, dict):
            return {"ok": False, "reason": REASON_TEMPORARY, "error": f"gateway {profile} sent an invalid answer"}
        return answer
