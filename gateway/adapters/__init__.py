"""Platform adapters: the ways a gateway sends a notification.

`local` is always on. The others are on when their variable is set in the profile's
`.env` file or in the gateway's environment: `HERMESD_WEBHOOK_URL`, `TELEGRAM_BOT_TOKEN`,
`DISCORD_BOT_TOKEN`, `SLACK_BOT_TOKEN`.
"""

from __future__ import annotations

from typing import Any

from gateway.adapters import discord, local, slack, telegram, webhook
from gateway.adapters.base import Adapter, Settings

# The variable that turns each optional platform on.
ENABLING_VARIABLES = {
    "webhook": webhook.URL_VARIABLE,
    "telegram": telegram.TOKEN_VARIABLE,
    "discord": discord.TOKEN_VARIABLE,
    "slack": slack.TOKEN_VARIABLE,
}

_BUILDERS: dict[str, Any] = {
    "local": local.build,
    "webhook": webhook.build,
    "telegram": telegram.build,
    "discord": discord.build,
    "slack": slack.build,
}


def build_adapters(settings: Settings) -> dict[str, Adapter]:
    """Build the adapters whose settings are present, keyed by platform name."""
    adapters: dict[str, Adapter] = {}
    for platform, build in _BUILDERS.items():
        adapter = build(settings)
        if adapter is not None:
            adapters[platform] = adapter
    return adapters


def missing_platform_reason(settings: Settings, platform: str) -> str:
    """Explain why `platform` has no adapter in this profile, and how to add one."""
    variable = ENABLING_VARIABLES.get(platform)
    if variable is None:
        known = ", ".join(sorted(_BUILDERS))
        return f"platform {platform!r} is not supported by hermesd (supported: {known})"
    return (f"platform {platform} is not configured for profile {settings.profile}: set {variable} in "
            f"{settings.env_path}, then run `hermesd reload`")
