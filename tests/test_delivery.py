"""The gateway side of notifications: adapters against a loopback server, and the delivery socket."""

from __future__ import annotations

import hashlib
import hmac
import json
import stat
from pathlib import Path

import pytest

from gateway.adapters import build_adapters
from gateway.adapters.base import Settings
from gateway.adapters.http import PERMANENT, TEMPORARY, RetryPolicy, SendError, parse_retry_after
from gateway.adapters.local import local_file
from gateway.delivery import DeliveredIds, DeliveryClient, DeliveryServer, delivered_ids_path, socket_path
from kanban.notifier import REASON_GATEWAY_DOWN, REASON_NOT_CONFIGURED, REASON_PERMANENT
from tests.fake_platforms import FakePlatformServer

TOKEN = "123456:SECRET-telegram-token"
FAST_RETRY = RetryPolicy(attempts=3, initial_delay=0.05, max_delay=5.0, request_timeout=5.0)


def message(platform: str, chat_id: str = "1001", message_id: str = "default-9-abc") -> dict:
    return {"id": message_id, "platform": platform, "chat_id": chat_id, "thread_id": "", "task_id": "t_1",
            "kind": "completed", "text": "Task t_1 completed: Draft\nall good"}


def settings(tmp_path: Path, env: dict[str, str], profile: str = "writer") -> Settings:
    return Settings(profile, tmp_path, env, {}, retry=FAST_RETRY)


@pytest.fixture
def server():
    with FakePlatformServer() as fake:
        yield fake


def test_telegram_sends_to_bot_path(tmp_path, server):
    adapters = build_adapters(settings(tmp_path, {"TELEGRAM_BOT_TOKEN": TOKEN, "TELEGRAM_API_BASE_URL": server.url}))
    adapters["telegram"].send(message("telegram"))

    [request] = server.posts()
    assert request.path == f"/bot{TOKEN}/sendMessage"
    assert request.json["chat_id"] == "1001"
    assert request.json["text"].startswith("Task t_1 completed")


def test_discord_and_slack_requests(tmp_path, server):
    env = {"DISCORD_BOT_TOKEN": "discord-token", "DISCORD_API_BASE_URL": server.url,
           "SLACK_BOT_TOKEN": "xoxb-slack", "SLACK_API_BASE_URL": server.url}
    adapters = build_adapters(settings(tmp_path, env))
    adapters["discord"].send(message("discord", chat_id="2002"))
    adapters["slack"].send({**message("slack", chat_id="C42"), "thread_id": "1700.1"})

    discord_request, slack_request = server.posts()
    assert discord_request.path == "/api/v10/channels/2002/messages"
    assert discord_request.headers["Authorization"] == "Bot discord-token"
    assert "content" in discord_request.json
    assert slack_request.path == "/api/chat.postMessage"
    assert slack_request.headers["Authorization"] == "Bearer xoxb-slack"
    assert slack_request.json["channel"] == "C42"
    assert slack_request.json["thread_ts"] == "1700.1"


def test_only_configured_platforms_are_built(tmp_path):
    adapters = build_adapters(settings(tmp_path, {"TELEGRAM_BOT_TOKEN": TOKEN}))
    assert sorted(adapters) == ["local", "telegram"]


def test_retry_after_is_honoured(tmp_path, server):
    server.respond(429, {"ok": False, "parameters": {"retry_after": 1}}, headers={"Retry-After": "1"})
    adapters = build_adapters(settings(tmp_path, {"TELEGRAM_BOT_TOKEN": TOKEN, "TELEGRAM_API_BASE_URL": server.url}))
    adapters["telegram"].send(message("telegram"))

    first, second = server.posts()
    assert second.received_at - first.received_at >= 0.9


def test_server_errors_are_retried(tmp_path, server):
    server.respond(503)
    server.respond(500)
    adapters = build_adapters(settings(tmp_path, {"DISCORD_BOT_TOKEN": "d", "DISCORD_API_BASE_URL": server.url}))
    adapters["discord"].send(message("discord"))
    assert len(server.posts()) == 3


def test_client_error_is_permanent_and_redacted(tmp_path, server):
    server.respond(400, {"ok": False, "description": f"Bad Request: chat not found for {TOKEN}"})
    adapters = build_adapters(settings(tmp_path, {"TELEGRAM_BOT_TOKEN": TOKEN, "TELEGRAM_API_BASE_URL": server.url}))
    with pytest.raises(SendError) as caught:
        adapters["telegram"].send(message("telegram"))

    assert caught.value.kind == PERMANENT
    assert len(server.posts()) == 1
    assert "HTTP 400" in str(caught.value)
    assert TOKEN not in str(caught.value)
    assert "<redacted>" in str(caught.value)


def test_unreachable_server_is_temporary(tmp_path):
    env = {"SLACK_BOT_TOKEN": "xoxb-1", "SLACK_API_BASE_URL": "http://127.0.0.1:9"}
    adapters = build_adapters(settings(tmp_path, env))
    with pytest.raises(SendError) as caught:
        adapters["slack"].send(message("slack"))
    assert caught.value.kind == TEMPORARY
    assert "gave up after 3 tries" in str(caught.value)


def test_long_retry_after_is_handed_back(tmp_path, server):
    server.respond(429, {"retry_after": 120.0}, headers={"Retry-After": "120"})
    adapters = build_adapters(settings(tmp_path, {"DISCORD_BOT_TOKEN": "d", "DISCORD_API_BASE_URL": server.url}))
    with pytest.raises(SendError) as caught:
        adapters["discord"].send(message("discord"))
    assert caught.value.kind == TEMPORARY
    assert caught.value.retry_after == 120.0


def test_retry_after_formats():
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    assert parse_retry_after("soon") is None


def test_webhook_signature_verifies(tmp_path, server):
    secret = "shared-webhook-secret"
    env = {"HERMESD_WEBHOOK_URL": f"{server.url}/hooks/kanban", "HERMESD_WEBHOOK_SECRET": secret}
    build_adapters(settings(tmp_path, env))["webhook"].send(message("webhook"))

    [request] = server.posts("/hooks/kanban")
    expected = "sha256=" + hmac.new(secret.encode(), request.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(request.headers["X-Hermesd-Signature"], expected)
    assert request.headers["X-Hermesd-Delivery"] == "default-9-abc"
    assert request.json["task_id"] == "t_1"


def test_local_adapter_appends_lines(tmp_path):
    adapter = build_adapters(settings(tmp_path, {}))["local"]
    adapter.send(message("local", message_id="a"))
    adapter.send(message("local", message_id="b"))

    path = local_file(tmp_path)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["id"] for line in lines] == ["a", "b"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_delivered_ids_survive_torn_line(tmp_path):
    path = tmp_path / "writer.delivered"
    ids = DeliveredIds(path)
    ids.add("first")
    with open(path, "ab") as handle:
        handle.write(b"half-writ")

    reloaded = DeliveredIds(path)
    reloaded.add("second")
    assert "first" in reloaded
    assert "half-writ" not in reloaded
    assert path.read_text() == "first\nsecond\n"


def test_delivered_ids_compact(tmp_path):
    ids = DeliveredIds(tmp_path / "ids", keep=3)
    for number in range(7):
        ids.add(str(number))
    assert DeliveredIds(tmp_path / "ids").ids == ["4", "5", "6"]


@pytest.fixture
def run_dir(tmp_path):
    directory = tmp_path / ("r" * 60) / ("long-run-directory-" * 3)  # longer than a unix socket address
    directory.mkdir(parents=True)
    return directory


def test_socket_delivers_once(tmp_path, run_dir, server):
    env = {"TELEGRAM_BOT_TOKEN": TOKEN, "TELEGRAM_API_BASE_URL": server.url}
    gateway = DeliveryServer(run_dir, settings(tmp_path, env), build_adapters(settings(tmp_path, env)))
    gateway.start()
    try:
        client = DeliveryClient(run_dir, timeout=10)
        first = client.deliver("writer", message("telegram"))
        again = client.deliver("writer", message("telegram"))
    finally:
        gateway.stop()

    assert first == {"ok": True, "id": "default-9-abc", "duplicate": False}
    assert again["ok"] is True
    assert again["duplicate"] is True
    assert len(server.posts()) == 1
    assert "default-9-abc" in DeliveredIds(delivered_ids_path(run_dir, "writer"))


def test_socket_file_is_private(tmp_path, run_dir):
    gateway = DeliveryServer(run_dir, settings(tmp_path, {}), build_adapters(settings(tmp_path, {})))
    gateway.start()
    try:
        mode = stat.S_IMODE(socket_path(run_dir, "writer").stat().st_mode)
    finally:
        gateway.stop()
    assert mode == 0o600


def test_missing_platform_is_reported(tmp_path, run_dir):
    gateway = DeliveryServer(run_dir, settings(tmp_path, {}, profile="coder"),
                             build_adapters(settings(tmp_path, {}, profile="coder")))
    gateway.start()
    try:
        answer = DeliveryClient(run_dir, timeout=10).deliver("coder", message("discord", chat_id="2002"))
    finally:
        gateway.stop()

    assert answer["ok"] is False
    assert answer["reason"] == REASON_NOT_CONFIGURED
    assert "DISCORD_BOT_TOKEN" in answer["error"]
    assert str(tmp_path / ".env") in answer["error"]


def test_rejected_send_is_not_recorded(tmp_path, run_dir, server):
    server.respond(400, {"ok": False, "description": "Bad Request: chat not found"})
    env = {"TELEGRAM_BOT_TOKEN": TOKEN, "TELEGRAM_API_BASE_URL": server.url}
    gateway = DeliveryServer(run_dir, settings(tmp_path, env), build_adapters(settings(tmp_path, env)))
    gateway.start()
    try:
        answer = DeliveryClient(run_dir, timeout=10).deliver("writer", message("telegram"))
    finally:
        gateway.stop()

    assert answer["reason"] == REASON_PERMANENT
    assert TOKEN not in json.dumps(answer)
    assert "default-9-abc" not in DeliveredIds(delivered_ids_path(run_dir, "writer"))


def test_absent_gateway_is_down(run_dir):
    answer = DeliveryClient(run_dir, timeout=1).deliver("coder", message("discord"))
    assert answer["ok"] is False
    assert answer["reason"] == REASON_GATEWAY_DOWN
