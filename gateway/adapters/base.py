"""The adapter interface, and the profile settings that adapters are built from."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from gateway.adapters.http import RetryPolicy

# Maximum text length of one chat message, under Discord's limit of 2000 characters.
MAX_TEXT_CHARS = 1900


@dataclass(frozen=True)
class Settings:
    """A profile's name and home, and its variables: the `.env` file first, then the environment."""

    profile: str
    directory: Path
    env_file: Mapping[str, str]
    environ: Mapping[str, str]
    retry: RetryPolicy = RetryPolicy()

    def get(self, key: str) -> str:
        value = self.env_file.get(key)
        if value is None:
            value = self.environ.get(key, "")
        return value.strip()

    @property
    def env_path(self) -> Path:
        return self.directory / ".env"


class Adapter(Protocol):
    """Sends one notification to one platform; raises SendError when it cannot."""

    platform: str

    def send(self, message: dict[str, Any]) -> dict[str, Any]: ...


def message_text(message: dict[str, Any]) -> str:
    text = str(message.get("text") or "")
    if len(text) > MAX_TEXT_CHARS:
        text = text[:MAX_TEXT_CHARS - 1] + "…"
    return text


class BotAdapter:
    """An adapter for a chat platform's HTTP API, on when its bot token variable is set."""

    platform = ""
    token_variable = ""
    base_url_variable = ""
    default_base_url = ""

    def __init__(self, settings: Settings, token: str, base_url: str, secrets: Sequence[str]):
        self.settings = settings
        self.token = token
        self.base_url = base_url.rstrip("/")
        # Every secret of the profile (`profile_secrets`), redacted from this adapter's errors.
        self.secrets = [token, *secrets]

    @classmethod
    def build(cls, settings: Settings, secrets: Sequence[str]) -> BotAdapter | None:
        token = settings.get(cls.token_variable)
        if not token:
            return None
        return cls(settings, token, settings.get(cls.base_url_variable) or cls.default_base_url, secrets)
