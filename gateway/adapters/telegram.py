"""The `telegram` platform: the Bot API's sendMessage, with the bot token from `TELEGRAM_BOT_TOKEN`.

`TELEGRAM_API_BASE_URL` replaces `https://api.telegram.org` (a local Bot API server, a proxy, a test).
"""

from __future__ import annotations

from typing import Any

from gateway.adapters.base import BotAdapter, message_text
from gateway.adapters.http import PERMANENT, SendError, post_json, safe_detail

TOKEN_VARIABLE = "TELEGRAM_BOT_TOKEN"
BASE_URL_VARIABLE = "TELEGRAM_API_BASE_URL"
DEFAULT_BASE_URL = "https://api.telegram.org"


class TelegramAdapter(BotAdapter):
    platform = "telegram"
    token_variable = TOKEN_VARIABLE
    base_url_variable = BASE_URL_VARIABLE
    default_base_url = DEFAULT_BASE_URL

    def send(self, message: dict[str, Any]) -> dict[str, Any]:
        payload: dict[str, Any] = {"chat_id": message["chat_id"], "text": message_text(message)}
        if message.get("thread_id"):
            payload["message_thread_id"] = message["thread_id"]
        answer = post_json(f"{self.base_url}/bot{self.token}/sendMessage", payload, secrets=self.secrets,
                           policy=self.settings.retry, label="telegram: ")
        if isinstance(answer, dict) and answer.get("ok") is False:
            description = safe_detail(answer.get("description", "no description"), self.secrets)
            raise SendError(PERMANENT, f"telegram: sendMessage failed: {description}")
        result = answer.get("result") if isinstance(answer, dict) else None
        return {"platform_message_id": (result or {}).get("message_id")}


build = TelegramAdapter.build
