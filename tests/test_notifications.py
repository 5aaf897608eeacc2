"""Notifications end to end: hermesd on a copy of the real home, fake platform APIs on loopback."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
import sys
from pathlib import Path

import pytest

from kanban.notifier import DROPPED_EVENT_KIND, MAX_PERMANENT_FAILURES
from tests.fake_platforms import FakePlatformServer
from tests.helpers import Hermesd, wait_for
from tests.notify_helpers import (CODER_TASK, RESEARCHER_TASK, WRITER_TASK, end_task, events, park_tasks, subscribe,
                                  subscriptions)

pytestmark = pytest.mark.slow

WRITER_TOKEN = "7001:writer-telegram-token-SECRET"
CODER_TOKEN = "coder-discord-token-SECRET"
WEBHOOK_SECRET = "webhook-shared-secret"
NEWSLETTER_READY_TASK = "t_aec7938c"


@pytest.fixture
def quiet_home(home: Path) -> Path:
    """The home with its ready tasks parked, so the dispatcher starts no worker and writes no event."""
    park_tasks(home / "kanban.db", RESEARCHER_TASK, CODER_TASK)
    park_tasks(home / "kanban" / "boards" / "newsletter" / "kanban.db", NEWSLETTER_READY_TASK)
    return home


def set_worker(home: Path, profile: str, output: str) -> None:
    """Give `profile` a worker that prints `output` and exits 0, so the dispatcher completes its task."""
    command = [sys.executable, "-c", f"print({output!r})"]
    path = home / "profiles" / profile / "config.yaml"
    path.write_text(f"kanban:\n  dispatch_in_gateway: false\n  worker_command: {json.dumps(command)}\n")


def write_env(home: Path, profile: str, **values: str) -> None:
    directory = home if profile == "default" else home / "profiles" / profile
    lines = [f"{key}={value}" for key, value in values.items()]
    (directory / ".env").write_text("\n".join(lines) + "\n")


def api_urls(server: FakePlatformServer) -> dict[str, str]:
    return {"TELEGRAM_API_BASE_URL": server.url, "DISCORD_API_BASE_URL": server.url,
            "SLACK_API_BASE_URL": server.url}


def log_text(home: Path, profile: str) -> str:
    path = home / "hermesd" / "logs" / f"{profile}.log"
    return path.read_text(errors="replace") if path.exists() else ""


def all_logs(home: Path) -> str:
    return "".join(path.read_text(errors="replace") for path in (home / "hermesd" / "logs").glob("*.log*"))


def start(hermesd: Hermesd, server: FakePlatformServer, **extra_env: str) -> None:
    hermesd.up_detached(env={**api_urls(server), **extra_env})
    wait_for(lambda: hermesd.profile("default")["role"] == "leader", message="default to lead")
    wait_for(lambda: all(entry["state"] == "running" for entry in hermesd.status()["profiles"]),
             message="every gateway running")


def cursor(home: Path, task_id: str, platform: str) -> int | None:
    return subscriptions(home / "kanban.db").get((task_id, platform))


def test_writer_bot_sends_once(home, hermesd):
    park_tasks(home / "kanban.db", CODER_TASK)
    park_tasks(home / "kanban" / "boards" / "newsletter" / "kanban.db", NEWSLETTER_READY_TASK)
    set_worker(home, "researcher", "Sources collected")
    set_worker(home, "writer", "Draft saved to drafts/weekly.md")
    write_env(home, "writer", TELEGRAM_BOT_TOKEN=WRITER_TOKEN)
    with FakePlatformServer() as server:
        start(hermesd, server)

        # The researcher's worker completes its task, which readies the writer's; the writer's worker completes it.
        [completed] = wait_for(lambda: events(home / "kanban.db", WRITER_TASK, "completed"), timeout=30,
                               message="the writer's worker to complete its task")
        wait_for(lambda: cursor(home, WRITER_TASK, "telegram") == completed["id"], message="the cursor to move")
        posts = server.posts()

        assert hermesd.profile("default")["role"] == "leader"
        assert len(posts) == 1
        assert posts[0].path == f"/bot{WRITER_TOKEN}/sendMessage"
        assert posts[0].json["chat_id"] == "1001"
        assert "Draft the weekly newsletter" in posts[0].json["text"]
        assert "Draft saved to drafts/weekly.md" in posts[0].json["text"]
        assert WRITER_TOKEN not in all_logs(home)
        assert WRITER_TOKEN not in hermesd.run("status").stdout


def test_missing_token_waits_for_reload(quiet_home, hermesd):
    home = quiet_home
    with FakePlatformServer() as server:
        start(hermesd, server)
        end_task(home / "kanban.db", CODER_TASK, "blocked", {"reason": "needs a test database"}, status="blocked")

        pending = wait_for(lambda: hermesd.profile("coder").get("pending_notifications"),
                           message="a pending notification for coder")
        assert pending["count"] == 1
        assert "DISCORD_BOT_TOKEN" in pending["reason"]
        assert "coder: 1 notification(s) pending" in hermesd.run("status").stdout
        assert server.posts() == []

        write_env(home, "coder", DISCORD_BOT_TOKEN=CODER_TOKEN)
        assert hermesd.run("reload").returncode == 0

        wait_for(lambda: hermesd.profile("coder").get("pending_notifications") is None,
                 message="the pending count to clear")
        posts = server.posts()
        assert len(posts) == 1
        assert posts[0].path == "/api/v10/channels/2002/messages"
        assert posts[0].headers["Authorization"] == f"Bot {CODER_TOKEN}"
        assert "needs a test database" in posts[0].json["content"]
        assert CODER_TOKEN not in all_logs(home)
        assert CODER_TOKEN not in hermesd.run("status", "--json").stdout


def kill_when_logged(hermesd: Hermesd, home: Path, profile: str, text: str) -> None:
    wait_for(lambda: text in log_text(home, profile), message=f"{text!r} in the log of {profile}")
    pid = hermesd.profile(profile)["pid"]
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: hermesd.profile(profile)["pid"] not in (None, pid), message=f"{profile} to restart")


@pytest.mark.chaos
def test_kill_between_send_and_cursor(quiet_home, hermesd):
    home = quiet_home
    write_env(home, "writer", TELEGRAM_BOT_TOKEN=WRITER_TOKEN)
    database = home / "kanban.db"
    with FakePlatformServer() as server:
        start(hermesd, server, HERMESD_TEST_PAUSE_BEFORE_ACK="2", HERMESD_TEST_PAUSE_BEFORE_CURSOR="2")

        # The writer gateway dies after sending and recording, before it acknowledges.
        blocked = end_task(database, WRITER_TASK, "blocked", {"reason": "waiting for sources"}, status="blocked")
        kill_when_logged(hermesd, home, "writer", "before acknowledging message")
        assert cursor(home, WRITER_TASK, "telegram") < blocked
        wait_for(lambda: cursor(home, WRITER_TASK, "telegram") == blocked, message="the cursor after the resend")
        assert len(server.posts()) == 1

        # The leader dies after the acknowledgement, before it moves the cursor.
        completed = end_task(database, WRITER_TASK, payload={"summary": "Draft saved"})
        kill_when_logged(hermesd, home, "default", f"-{completed}-")
        assert cursor(home, WRITER_TASK, "telegram") == blocked
        wait_for(lambda: hermesd.profile("default")["role"] == "leader", message="default to lead again")
        wait_for(lambda: cursor(home, WRITER_TASK, "telegram") == completed, message="the new leader's cursor")

        texts = [post.json["text"] for post in server.posts()]
        assert len(texts) == 2
        assert "blocked" in texts[0]
        assert "completed" in texts[1]
        assert "was delivered before; acknowledging without sending again" in log_text(home, "writer")


def test_rate_limit_rejection_and_webhook(quiet_home, hermesd):
    home = quiet_home
    database = home / "kanban.db"
    write_env(home, "writer", TELEGRAM_BOT_TOKEN=WRITER_TOKEN)
    write_env(home, "coder", DISCORD_BOT_TOKEN=CODER_TOKEN)
    with FakePlatformServer() as server:
        write_env(home, "default", HERMESD_WEBHOOK_URL=f"{server.url}/hooks/kanban",
                  HERMESD_WEBHOOK_SECRET=WEBHOOK_SECRET)
        start(hermesd, server)

        # 429 with Retry-After 1, then success: one message, sent after the wait.
        server.respond(429, {"ok": False, "parameters": {"retry_after": 1}}, headers={"Retry-After": "1"})
        completed = end_task(database, WRITER_TASK)
        wait_for(lambda: cursor(home, WRITER_TASK, "telegram") == completed, message="the rate-limited message")
        first, second = server.posts("/sendMessage")
        assert second.received_at - first.received_at >= 0.9
        assert first.json == second.json

        # 400 every time: the subscription is dropped after the documented number of tries.
        for _ in range(MAX_PERMANENT_FAILURES):
            server.respond(400, {"message": "Unknown Channel", "code": 10003})
        end_task(database, CODER_TASK, "blocked", {"reason": "flaky again"}, status="blocked")
        wait_for(lambda: (CODER_TASK, "discord") not in subscriptions(database), timeout=30,
                 message="the discord subscription to be dropped")
        assert len(server.posts("/channels/2002/")) == MAX_PERMANENT_FAILURES
        [dropped] = events(database, CODER_TASK, DROPPED_EVENT_KIND)
        assert dropped["payload"]["platform"] == "discord"
        assert CODER_TOKEN not in str(dropped["payload"])
        warnings = [line for line in log_text(home, "default").splitlines() if "dropped the subscription" in line]
        assert len(warnings) == 1
        assert CODER_TASK in warnings[0]
        assert "discord" in warnings[0]

        # Webhook: the signature checks out with the shared secret.
        subscribe(database, RESEARCHER_TASK, "webhook", "ops", None)
        end_task(database, RESEARCHER_TASK)
        [hook] = server.wait_for_posts(1, "/hooks/kanban")
        expected = "sha256=" + hmac.new(WEBHOOK_SECRET.encode(), hook.body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(hook.headers["X-Hermesd-Signature"], expected)
        assert hook.json["task_id"] == RESEARCHER_TASK
        assert hook.json["kind"] == "completed"
        assert WEBHOOK_SECRET not in all_logs(home)


def test_webhook_url_secrets_stay_out(quiet_home, hermesd):
    """A receiver echoes its URL in a 400 body, and no secret part of it reaches a log, the status or a task event."""
    home = quiet_home
    database = home / "kanban.db"
    query_token = "QUERYLEAK-e2e"
    path_token = "PATHLEAK-0123456789abcdef"
    password = "PASSWORDLEAK-e2e"
    with FakePlatformServer() as server:
        host, port = server.httpd.server_address[:2]
        write_env(home, "writer", HERMESD_WEBHOOK_URL=f"http://ops:{password}@{host}:{port}/hook/{path_token}"
                                                      f"?token={query_token}")
        for _ in range(MAX_PERMANENT_FAILURES):
            server.respond(400, lambda request: {"description": f"Bad Request: bad path {request.path}",
                                                 "auth": request.headers.get("Authorization")})
        start(hermesd, server)

        subscribe(database, RESEARCHER_TASK, "webhook", "ops", "writer")
        end_task(database, RESEARCHER_TASK)
        wait_for(lambda: (RESEARCHER_TASK, "webhook") not in subscriptions(database), timeout=30,
                 message="the webhook subscription to be dropped")

        [dropped] = events(database, RESEARCHER_TASK, DROPPED_EVENT_KIND)
        payload = json.dumps(dropped["payload"])
        logs = all_logs(home)
        status = hermesd.run("status", "--json").stdout
        shown = hermesd.run("kanban", "show", RESEARCHER_TASK).stdout
        assert f"HTTP 400 from http://{host}:{port}" in dropped["payload"]["error"]
        assert DROPPED_EVENT_KIND in shown
        assert "HTTP 400" in log_text(home, "writer")
        assert RESEARCHER_TASK in log_text(home, "default")
        for secret in (query_token, path_token, password, "/hook"):
            assert secret not in payload
            assert secret not in logs
            assert secret not in status
            assert secret not in shown
