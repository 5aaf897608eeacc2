"""Secrets in a profile's platform settings never reach an error, a log record or a task event.

The fake server plays a receiver that echoes the request (its path, query or credentials)
in an error body, as many do. Each test checks the error text an adapter raises and every
log record, and the end-to-end test checks the stored `notify_sub_dropped` payload too.
"""

from __future__ import annotations

import base64
import logging
import socket
import types
import urllib.error
import urllib.parse
from pathlib import Path

import pytest

from gateway.adapters import build_adapters
from gateway.adapters import http as http_module
from gateway.adapters.base import Settings
from gateway.adapters.http import (ERROR_BODY_CHARS, PERMANENT, TEMPORARY, RetryPolicy, SendError, redact,
                                   url_secrets)
from gateway.delivery import DeliveryClient, DeliveryServer
from kanban import notifier as notifier_module
from kanban.notifier import DROPPED_EVENT_KIND, MAX_PERMANENT_FAILURES, REASON_PERMANENT
from tests.fake_platforms import FakePlatformServer, Request
from tests.notify_helpers import RESEARCHER_TASK, end_task, events, subscribe, subscriptions
from tests.test_notifier import Leader

FAST_RETRY = RetryPolicy(attempts=2, initial_delay=0.05, max_delay=5.0, request_timeout=5.0)

QUERY_TOKEN = "QUERYLEAK-3f9a"
PATH_TOKEN = "PATHLEAK0123456789abcdefXYZ"
USER = "hookuser-LEAK"
PASSWORD = "PASSWORDLEAK-77"
WEBHOOK_SECRET = "SIGNINGLEAK-secret"
BOT_TOKEN = "8001:BOTLEAK-telegram-token"


def settings(tmp_path: Path, env: dict[str, str]) -> Settings:
    return Settings("writer", tmp_path, env, {}, retry=FAST_RETRY)


def webhook(tmp_path: Path, url: str):
    return build_adapters(settings(tmp_path, {"HERMESD_WEBHOOK_URL": url,
                                              "HERMESD_WEBHOOK_SECRET": WEBHOOK_SECRET}))["webhook"]


def send_error(adapter, platform: str = "webhook") -> SendError:
    message = {"id": "default-9-abc", "platform": platform, "chat_id": "1001", "thread_id": "",
               "task_id": "t_1", "kind": "completed", "text": "Task t_1 completed"}
    with pytest.raises(SendError) as caught:
        adapter.send(message)
    return caught.value


def echo_everything(request: Request) -> dict[str, str]:
    """Echo the raw and decoded path and the credentials, as a careless receiver's 4xx body does."""
    return {"ok": "false",
            "description": f"Bad Request: bad path {request.path}",
            "decoded": urllib.parse.unquote_plus(request.path),
            "auth": request.headers.get("Authorization", ""),
            "signature": request.headers.get("X-Hermesd-Signature", "")}


def leaked(text: str, *secrets: str) -> list[str]:
    return [secret for secret in secrets if secret.lower() in text.lower()]


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def server():
    with FakePlatformServer() as fake:
        yield fake


@pytest.fixture
def logs(caplog):
    caplog.set_level(logging.DEBUG)
    return caplog


def test_echoed_query_token(tmp_path, server, logs):
    server.respond(400, echo_everything)
    url = f"{server.url}/hook?token={QUERY_TOKEN}&team=ops%2F{QUERY_TOKEN}+x"

    error = send_error(webhook(tmp_path, url))

    assert error.kind == PERMANENT
    assert "HTTP 400" in str(error)
    assert f"from {server.url}:" in str(error)
    assert leaked(str(error), QUERY_TOKEN, "/hook", "ops/", WEBHOOK_SECRET) == []
    assert leaked(logs.text, QUERY_TOKEN, "/hook", WEBHOOK_SECRET) == []


def test_token_in_url_path(tmp_path, server, logs):
    path = f"/services/T0001/B0002/{PATH_TOKEN}"
    server.respond(404, f"invalid_token {PATH_TOKEN}; no route for {path}".encode())

    error = send_error(webhook(tmp_path, server.url + path))

    assert "HTTP 404" in str(error)
    assert f"from {server.url}:" in str(error)
    assert leaked(str(error), PATH_TOKEN, path) == []
    assert leaked(logs.text, PATH_TOKEN, path) == []


def test_userinfo_in_url(tmp_path, server, logs):
    host, port = server.httpd.server_address[:2]
    server.respond(401, echo_everything)

    error = send_error(webhook(tmp_path, f"http://{USER}:{PASSWORD}@{host}:{port}/hook"))

    [request] = server.posts()
    credentials = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    assert request.headers["Authorization"] == f"Basic {credentials}"
    assert "HTTP 401" in str(error)
    assert f"from http://{host}:{port}:" in str(error)
    assert leaked(str(error), USER, PASSWORD, credentials, WEBHOOK_SECRET) == []
    assert leaked(logs.text, USER, PASSWORD, credentials) == []


def test_refused_connection_names_origin(tmp_path, logs):
    port = closed_port()

    error = send_error(webhook(tmp_path, f"http://{USER}:{PASSWORD}@127.0.0.1:{port}/{PATH_TOKEN}?t={QUERY_TOKEN}"))

    assert error.kind == TEMPORARY
    assert f"cannot reach http://127.0.0.1:{port}" in str(error)
    assert leaked(str(error), USER, PASSWORD, PATH_TOKEN, QUERY_TOKEN) == []
    assert leaked(logs.text, USER, PASSWORD, PATH_TOKEN, QUERY_TOKEN) == []


def test_exception_text_with_url(tmp_path, logs, monkeypatch):
    def refuse(request, timeout=None):
        raise urllib.error.URLError(f"connection to {request.full_url} refused "
                                    f"(decoded: {urllib.parse.unquote(request.full_url)})")

    monkeypatch.setattr(http_module, "_open", refuse)
    url = f"https://hooks.example.test/{PATH_TOKEN}?token={QUERY_TOKEN}%21"

    error = send_error(webhook(tmp_path, url))

    assert error.kind == TEMPORARY
    assert "cannot reach https://hooks.example.test:443" in str(error)
    assert leaked(str(error), PATH_TOKEN, QUERY_TOKEN) == []
    assert leaked(logs.text, PATH_TOKEN, QUERY_TOKEN) == []


def test_url_without_scheme(tmp_path, logs):
    # urllib rejects it with "unknown url type: '<the whole URL>'".
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    env = {"HERMESD_WEBHOOK_URL": f"127.0.0.1/hook?token={QUERY_TOKEN}"}
    gateway = DeliveryServer(run_dir, settings(tmp_path, env), build_adapters(settings(tmp_path, env)))
    gateway.start()
    try:
        answer = DeliveryClient(run_dir, timeout=10).deliver("writer", {
            "id": "default-9-abc", "platform": "webhook", "chat_id": "ops", "task_id": "t_1", "text": "done"})
    finally:
        gateway.stop()

    assert answer["reason"] == REASON_PERMANENT
    assert "cannot build the request" in answer["error"]
    assert leaked(answer["error"], QUERY_TOKEN, "/hook") == []
    assert leaked(logs.text, QUERY_TOKEN, "/hook") == []


def test_short_query_value_as_word():
    secrets = url_secrets("http://127.0.0.1:9/hook?v=1&token=abc")

    assert redact("[Errno 111] Connection refused", secrets) == "[Errno 111] Connection refused"
    assert redact("bad version 1 for token abc", secrets) == "bad version <redacted> for token <redacted>"
    assert redact("query v=1&token=abc", secrets) == "query <redacted>"


def test_error_body_is_capped(tmp_path, server):
    adapter = webhook(tmp_path, f"{server.url}/hook?token={QUERY_TOKEN}")
    echo = f"bad path /hook?token={QUERY_TOKEN}"
    # Place the echo across the cut at every offset, so no cut can keep a part of the token.
    for padding in range(ERROR_BODY_CHARS - len(echo) - 12, ERROR_BODY_CHARS + 2):
        server.respond(400, {"description": "x" * padding + echo + "y" * 100_000})

        error = str(send_error(adapter))

        assert len(error) < ERROR_BODY_CHARS + 100
        assert leaked(error, QUERY_TOKEN[:4]) == [], f"padding {padding}: {error[-40:]!r}"


def test_telegram_description_is_redacted(tmp_path, server):
    server.respond(200, {"ok": False, "description": f"Forbidden: bot{BOT_TOKEN} was blocked " + "z" * 5000})
    env = {"TELEGRAM_BOT_TOKEN": BOT_TOKEN, "TELEGRAM_API_BASE_URL": server.url}

    error = send_error(build_adapters(settings(tmp_path, env))["telegram"], "telegram")

    assert "was blocked" in str(error)
    assert BOT_TOKEN not in str(error)
    assert len(str(error)) < ERROR_BODY_CHARS + 100


def test_slack_error_code_is_redacted(tmp_path, server):
    server.respond(200, {"ok": False, "error": "invalid_auth for xoxb-SLACKLEAK " + "z" * 5000})
    env = {"SLACK_BOT_TOKEN": "xoxb-SLACKLEAK", "SLACK_API_BASE_URL": server.url}

    error = send_error(build_adapters(settings(tmp_path, env))["slack"], "slack")

    assert "invalid_auth" in str(error)
    assert "xoxb-SLACKLEAK" not in str(error)
    assert len(str(error)) < ERROR_BODY_CHARS + 100


def test_redirect_is_not_followed(tmp_path, server):
    # urllib would follow a 302 on a POST as a GET that keeps the Authorization header.
    with FakePlatformServer() as elsewhere:
        server.respond(302, {}, headers={"Location": f"{elsewhere.url}/collect"})
        env = {"DISCORD_BOT_TOKEN": "discord-REDIRECTLEAK", "DISCORD_API_BASE_URL": server.url}

        error = send_error(build_adapters(settings(tmp_path, env))["discord"], "discord")

        assert error.kind == PERMANENT
        assert "HTTP 302" in str(error)
        assert elsewhere.requests == []


def test_dropped_subscription_event(home, tmp_path, server, logs, monkeypatch):
    monkeypatch.setattr(notifier_module, "PERMANENT_RETRY_SECONDS", 0.05)
    database = home / "kanban.db"
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    host, port = server.httpd.server_address[:2]
    url = f"http://{USER}:{PASSWORD}@{host}:{port}/hook/{PATH_TOKEN}?token={QUERY_TOKEN}"
    for _ in range(MAX_PERMANENT_FAILURES):
        server.respond(400, echo_everything)
    subscribe(database, RESEARCHER_TASK, "webhook", "ops", "writer")
    writer = settings(home, {"HERMESD_WEBHOOK_URL": url, "HERMESD_WEBHOOK_SECRET": WEBHOOK_SECRET})
    gateway = DeliveryServer(run_dir, writer, build_adapters(writer))
    gateway.start()
    leader = Leader(database, types.SimpleNamespace(deliver=DeliveryClient(run_dir, timeout=10).deliver))
    try:
        end_task(database, RESEARCHER_TASK)
        leader.run_until(lambda: (RESEARCHER_TASK, "webhook") not in subscriptions(database), "the drop")
    finally:
        leader.close()
        gateway.stop()

    secrets = (USER, PASSWORD, PATH_TOKEN, QUERY_TOKEN, WEBHOOK_SECRET, "/hook")
    [dropped] = events(database, RESEARCHER_TASK, DROPPED_EVENT_KIND)
    assert dropped["payload"]["platform"] == "webhook"
    assert f"HTTP 400 from http://{host}:{port}" in dropped["payload"]["error"]
    assert leaked(str(dropped["payload"]), *secrets) == []
    assert leaked(str(leader.reports), *secrets) == []
    assert leaked(logs.text, *secrets) == []
    assert RESEARCHER_TASK in logs.text


def profile_with_webhook_and_discord(tmp_path: Path, server: FakePlatformServer) -> Settings:
    host, port = server.httpd.server_address[:2]
    return settings(tmp_path, {
        "HERMESD_WEBHOOK_URL": f"http://{USER}:{PASSWORD}@{host}:{port}/hook/{PATH_TOKEN}?token={QUERY_TOKEN}",
        "HERMESD_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "DISCORD_BOT_TOKEN": "DiscTokXYZ987",
        "DISCORD_API_BASE_URL": server.url,
        "SLACK_BOT_TOKEN": "xoxb-SLACKLEAK",
    })


def test_other_platform_secrets_in_error(tmp_path, server, logs):
    # The Discord server echoes the webhook's secrets, which the Discord adapter never sends.
    server.respond(400, {"message": f"bad {WEBHOOK_SECRET} at /hook/{PATH_TOKEN}?token={QUERY_TOKEN} "
                                    f"from {USER}:{PASSWORD} with xoxb-SLACKLEAK"})
    adapters = build_adapters(profile_with_webhook_and_discord(tmp_path, server))

    error = send_error(adapters["discord"], "discord")

    secrets = (WEBHOOK_SECRET, PATH_TOKEN, QUERY_TOKEN, USER, PASSWORD, "/hook", "xoxb-SLACKLEAK", "DiscTokXYZ987")
    assert "HTTP 400" in str(error)
    assert leaked(str(error), *secrets) == []
    assert leaked(logs.text, *secrets) == []


def test_adapter_crash_is_redacted(tmp_path, server, logs):
    # An adapter bug whose exception text carries a secret of another platform.
    class CrashingAdapter:
        platform = "discord"

        def send(self, message):
            raise RuntimeError(f"cannot encode {WEBHOOK_SECRET} for /hook/{PATH_TOKEN}")

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    profile = profile_with_webhook_and_discord(tmp_path, server)
    gateway = DeliveryServer(run_dir, profile, {"discord": CrashingAdapter()})

    answer = gateway.deliver("default-9-abc", "discord", {"id": "default-9-abc", "platform": "discord",
                                                          "chat_id": "1001", "task_id": "t_1", "text": "done"})

    assert answer["reason"] == TEMPORARY
    assert "RuntimeError" in logs.text
    assert leaked(str(answer), WEBHOOK_SECRET, PATH_TOKEN) == []
    assert leaked(logs.text, WEBHOOK_SECRET, PATH_TOKEN) == []
