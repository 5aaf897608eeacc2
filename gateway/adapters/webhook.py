"""The `webhook` platform: a JSON POST of the whole message to `HERMESD_WEBHOOK_URL`.

With `HERMESD_WEBHOOK_SECRET` set, each request carries
`X-Hermesd-Signature: sha256=<hex HMAC-SHA256 of the raw body keyed with the secret>`.
`X-Hermesd-Delivery` carries the message id, which stays the same when a message is
resent, so a receiver can drop repeats. Userinfo in the URL is sent as `Authorization: Basic`.
Errors and logs name the receiver as `scheme://host:port` only.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Sequence
from typing import Any

from gateway.adapters.base import Settings
from gateway.adapters.http import post_json, url_secrets

URL_VARIABLE = "HERMESD_WEBHOOK_URL"
SECRET_VARIABLE = "HERMESD_WEBHOOK_SECRET"
SIGNATURE_HEADER = "X-Hermesd-Signature"
DELIVERY_HEADER = "X-Hermesd-Delivery"


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class WebhookAdapter:
    platform = "webhook"

    def __init__(self, settings: Settings, url: str, secret: str, secrets: Sequence[str]):
        self.settings = settings
        self.url = url
        self.secret = secret
        # Receivers put tokens in the path (Slack's and Discord's incoming webhooks), the query
        # or the userinfo, so all of them are redacted, with the profile's other secrets.
        self.secrets = [secret, *url_secrets(url, path=True), *secrets]

    def send(self, message: dict[str, Any]) -> dict[str, Any]:
        body = json.dumps(message, ensure_ascii=False, sort_keys=True).encode()
        headers = {DELIVERY_HEADER: str(message.get("id", ""))}
        if self.secret:
            headers[SIGNATURE_HEADER] = sign(self.secret, body)
        post_json(self.url, message, headers=headers, body_bytes=body, secrets=self.secrets,
                  policy=self.settings.retry, label="webhook: ")
        return {}


def build(settings: Settings, secrets: Sequence[str]) -> WebhookAdapter | None:
    url = settings.get(URL_VARIABLE)
    if not url:
        return None
    return WebhookAdapter(settings, url, settings.get(SECRET_VARIABLE), secrets)
