"""Platform adapters: the ways a gateway sends a notification.

`local` is always on. The others are on when their variable is set in the profile's
`.env` file or in the gateway's environment: `HERMESD_WEBHOOK_URL`, `TELEGRAM_BOT_TOKEN`,
`DISCORD_BOT_TOKEN`, `SLACK_BOT_TOKEN`.
"""

from __future__ import annotations

from typing import Any

from gateway.adapters import discord, local, slack, telegram, webhook
from gateway.adapters.base import Adapter, Settings
from gateway.adapters.http import url_secrets

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


# Variables whose whole value is a credential.
SECRET_VARIABLES = (telegram.TOKEN_VARIABLE, discord.TOKEN_VARIABLE, slack.TOKEN_VARIABLE,
                    webhook.SECRET_VARIABLE)
# URL variables whose userinfo, query and fragment can carry a credential.
BASE_URL_VARIABLES = (telegram.BASE_URL_VARIABLE, discord.BASE_URL_VARIABLE, slack.BASE_URL_VARIABLE)


def profile_secrets(settings: Settings) -> list[str]:
    """List every secret in the profile's platform settings, for `redact`.

    A server of one platform may echo a credential of another (a proxy in front of both, a
    receiver that logs its requests), so each adapter redacts all of them, not only its own.
    """
    secrets = [settings.get(variable) for variable in SECRET_VARIABLES]
    webhook_url = settings.get(webhook.URL_VARIABLE)
    if webhook_url:
        # Receivers put tokens in the path too (Slack's and Discord's incoming webhooks).
        secrets += [webhook_url, *url_secrets(webhook_url, path=True)]
    for variable in BASE_URL_VARIABLES:
        secrets += url_secrets(settings.get(variable))
    return [secret for secret in secrets if secret]


def build_adapters(settings: Settings) -> dict[str, Adapter]:
    """Build the adapters whose settings are present, keyed by platform name."""
    secrets = profile_secrets(settings)
    adapters: dict[str, Adapter] = {}
    for platform, build in _BUILDERS.items():
        adapter = build(settings, secrets)
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
