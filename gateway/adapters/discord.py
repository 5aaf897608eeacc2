"""The `discord` platform: create a message in a channel, with the bot token from `DISCORD_BOT_TOKEN`.

The subscription's chat id is the channel id; a thread id, when set, is the thread's
channel id and wins. `DISCORD_API_BASE_URL` replaces `https://discord.com`.
"""

from __future__ import annotations

import urllib.parse
from typing import Any

from gateway.adapters.base import BotAdapter, message_text
from gateway.adapters.http import post_json

TOKEN_VARIABLE = "DISCORD_BOT_TOKEN"
BASE_URL_VARIABLE = "DISCORD_API_BASE_URL"
DEFAULT_BASE_URL = "https://discord.com"
API_VERSION = "v10"


class DiscordAdapter(BotAdapter):
    platform = "discord"
    token_variable = TOKEN_VARIABLE
    base_url_variable = BASE_URL_VARIABLE
    default_base_url = DEFAULT_BASE_URL

    def send(self, message: dict[str, Any]) -> dict[str, Any]:
        channel = urllib.parse.quote(str(message.get("thread_id") or message["chat_id"]), safe="")
        url = f"{self.base_url}/api/{API_VERSION}/channels/{channel}/messages"
        answer = post_json(url, {"content": message_text(message)}, headers={"Authorization": f"Bot {self.token}"},
                           secrets=self.secrets, policy=self.settings.retry, label="discord: ")
        return {"platform_message_id": answer.get("id") if isinstance(answer, dict) else None}


build = DiscordAdapter.build
