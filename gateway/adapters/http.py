"""JSON over HTTP for the platform adapters: retries with backoff, Retry-After, and token redaction.

A 429 or 5xx response, a refused connection and a timeout are retried. The wait is the
server's Retry-After (the header, or a `retry_after` field in the JSON body, as
Telegram and Discord send it), else a doubling backoff. Any other 4xx answer is
permanent and raised at once. Every error message passes through `redact`, so a token
in a URL path (Telegram's `/bot<token>/`) or in a header never reaches a log.
"""

from __future__ import annotations

import email.utils
import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

PERMANENT = "permanent"
TEMPORARY = "temporary"

# Bytes of an error body kept in an error message.
ERROR_BODY_CHARS = 200


class SendError(Exception):
    """A message that could not be sent; `kind` is PERMANENT or TEMPORARY.

    `retry_after` is set when the server requested a longer wait than the adapter blocks
    for, so the caller should try again after that many seconds.
    """

    def __init__(self, kind: str, message: str, retry_after: float | None = None):
        self.kind = kind
        self.retry_after = retry_after
        super().__init__(message)


@dataclass(frozen=True)
class RetryPolicy:
    """Retry limits of one send, in seconds and tries."""

    attempts: int = 5
    initial_delay: float = 0.5
    max_delay: float = 30.0
    request_timeout: float = 10.0

    def backoff(self, attempt: int) -> float:
        return min(self.initial_delay * 2 ** (attempt - 1), self.max_delay)


def redact(text: str, secrets: Iterable[str]) -> str:
    """Replace every secret in `text` with `<redacted>`."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "<redacted>")
    return text


def parse_retry_after(value: str | None) -> float | None:
    """Read a Retry-After header: seconds, or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


def _retry_after_in_body(body: Any) -> float | None:
    """Telegram sends `parameters.retry_after`, Discord a top-level `retry_after` (seconds)."""
    if not isinstance(body, dict):
        return None
    for value in (body.get("retry_after"), (body.get("parameters") or {}).get("retry_after")):
        if isinstance(value, (int, float)) and value >= 0:
            return float(value)
    return None


def _decode(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else {}
    except ValueError:
        return {"raw": raw[:ERROR_BODY_CHARS].decode(errors="replace")}


def post_json(url: str, payload: dict[str, Any], *, headers: dict[str, str] | None = None,
              secrets: Iterable[str] = (), policy: RetryPolicy = RetryPolicy(), label: str = "",
              body_bytes: bytes | None = None,
              sleep: Callable[[float], None] = time.sleep) -> Any:
    """POST `payload` as JSON and return the decoded response body; raise SendError when it cannot be sent.

    `body_bytes` replaces the serialized payload (a signed webhook body must be sent byte for byte).
    """
    secrets = [secret for secret in secrets if secret]
    data = body_bytes if body_bytes is not None else json.dumps(payload).encode()
    request_headers = {"Content-Type": "application/json", "User-Agent": "hermesd"}
    request_headers.update(headers or {})
    safe_url = redact(url, secrets)
    last_error = ""

    for attempt in range(1, policy.attempts + 1):
        request = urllib.request.Request(url, data=data, headers=request_headers, method="POST")
        wait: float | None = None
        try:
            with urllib.request.urlopen(request, timeout=policy.request_timeout) as response:
                return _decode(response.read())
        except urllib.error.HTTPError as error:
            body = _decode(error.read())
            detail = redact(json.dumps(body)[:ERROR_BODY_CHARS], secrets)
            last_error = f"HTTP {error.code} from {safe_url}: {detail}"
            if error.code != 429 and error.code < 500:
                raise SendError(PERMANENT, f"{label}{last_error}") from None
            wait = parse_retry_after(error.headers.get("Retry-After"))
            if wait is None:
                wait = _retry_after_in_body(body)
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            last_error = f"cannot reach {safe_url}: {redact(str(reason), secrets)}"

        if attempt == policy.attempts:
            break
        if wait is None:
            wait = policy.backoff(attempt)
        elif wait > policy.max_delay:
            raise SendError(TEMPORARY, f"{label}{last_error}; the server asks to wait {wait:g} s",
                            retry_after=wait)
        log.warning("%s%s; retry %d of %d in %.1f s", label, last_error, attempt, policy.attempts - 1, wait)
        sleep(wait)

    raise SendError(TEMPORARY, f"{label}{last_error} (gave up after {policy.attempts} tries)")
