"""A loopback HTTP server that responds like the Telegram, Discord and Slack APIs and a webhook receiver.

It records every request (method, path, headers, raw body, decoded JSON, arrival time)
and responds from a script: queue `(status, headers, body)` tuples with `respond`, and
requests beyond the script get the platform's usual success answer. A scripted body may be
a function of the request, so a test can echo the request back as some servers do.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    received_at: float

    @property
    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


def _success_body(path: str) -> dict[str, Any]:
    if "/sendMessage" in path:
        return {"ok": True, "result": {"message_id": 1}}
    if path.endswith("/chat.postMessage"):
        return {"ok": True, "ts": "1700000000.000100"}
    if "/channels/" in path:
        return {"id": "9001"}
    return {"ok": True}


class FakePlatformServer:
    """Runs in a thread on 127.0.0.1 at an ephemeral port; use as a context manager."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.script: deque[tuple[int, dict[str, str], Any]] = deque()
        self.lock = threading.Lock()
        self.arrived = threading.Condition(self.lock)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the name http.server calls
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                with server.arrived:
                    server.requests.append(Request("POST", self.path, dict(self.headers), body, time.monotonic()))
                    status, headers, answer = server.script.popleft() if server.script else (
                        200, {}, _success_body(self.path))
                    request = server.requests[-1]
                    server.arrived.notify_all()
                if callable(answer):
                    answer = answer(request)
                # A bytes body goes out as is, as plain text, and anything else as JSON.
                is_text = isinstance(answer, bytes)
                data = answer if is_text else json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain" if is_text else "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       name="fake-platform", daemon=True)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def respond(self, status: int, body: Any = None, headers: dict[str, str] | None = None) -> None:
        """Queue the response to the next request that arrives.

        `body` is JSON data, bytes sent as plain text, or a function that takes the `Request`
        and returns either.
        """
        with self.lock:
            self.script.append((status, headers or {}, body if body is not None else {}))

    def posts(self, fragment: str = "") -> list[Request]:
        with self.lock:
            return [request for request in self.requests if fragment in request.path]

    def wait_for_posts(self, count: int, fragment: str = "", timeout: float = 20.0) -> list[Request]:
        deadline = time.monotonic() + timeout
        with self.arrived:
            while True:
                found = [request for request in self.requests if fragment in request.path]
                remaining = deadline - time.monotonic()
                if len(found) >= count or remaining <= 0:
                    return found
                self.arrived.wait(remaining)

    def __enter__(self) -> FakePlatformServer:
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
