"""The `slack` platform: chat.postMessage, with the bot token from `SLACK_BOT_TOKEN`.

Slack returns most failures as HTTP 200 with `"ok": false`. The `ratelimited` error is
retried later, and any other error code is permanent. `SLACK_API_BASE_URL` replaces `https://slack.com`.
"""

from __future__ import annotations

from typing import Any

from gateway.adapters.base import BotAdapter, message_text
from gateway.adapters.http import PERMANENT, TEMPORARY, SendError, post_json, safe_detail

TOKEN_VARIABLE = "SLACK_BOT_TOKEN"
BASE_URL_VARIABLE = "SLACK_API_BASE_URL"
DEFAULT_BASE_URL = "https://slack.com"


class SlackAdapter(BotAdapter):
    platform = "slack"
    token_variable = TOKEN_VARIABLE
    base_url_variable = BASE_URL_VARIABLE
    default_base_url = DEFAULT_BASE_URL

    def send(self, message: dict[str, Any]) -> dict[str, Any]:
        payload: dict[str, Any] = {"channel": message["chat_id"], "text": message_text(message)}
        if message.get("thread_id"):
            payload["thread_ts"] = message["thread_id"]
        answer = post_json(f"{self.base_url}/api/chat.postMessage", payload,
                           headers={"Authorization": f"Bearer {self.token}"}, secrets=self.secrets,
                           policy=self.settings.retry, label="slack: ")
        if isinstance(answer, dict) and answer.get("ok") is False:
            code = str(answer.get("error", "unknown_error"))
            kind = TEMPORARY if code == "ratelimited" else PERMANENT
            raise SendError(kind, f"slack: chat.postMessage failed: {safe_detail(code, self.secrets)}")
        return {"platform_message_id": answer.get("ts") if isinstance(answer, dict) else None}


build = SlackAdapter.build
