"""JSON over HTTP for the platform adapters: retries with backoff, Retry-After, and secret redaction.

A 429 or 5xx response, a refused connection and a timeout are retried. The wait is the
server's Retry-After (the header, or a `retry_after` field in the JSON body, as
Telegram and Discord send it), else a doubling backoff. Any other 3xx or 4xx response
is permanent and raised at once. Redirects are not followed, because urllib would resend
the Authorization header to the new location, as a GET that drops the message.

An error names the target as `scheme://host:port` only. Response bodies and exception
text are untrusted: a receiver may echo the request path, query or credentials. So every
one passes through `redact` with the caller's secrets and the URL's parts that can carry
one (`url_secrets`), and is cut to ERROR_BODY_CHARS after redaction.
"""

from __future__ import annotations

import base64
import email.utils
import http.client
import json
import logging
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

PERMANENT = "permanent"
TEMPORARY = "temporary"

REDACTED = "<redacted>"
# Characters of a response body or exception text kept in an error message, after redaction.
ERROR_BODY_CHARS = 300
# Maximum bytes of an error response that are read.
MAX_ERROR_BODY_BYTES = 64 * 1024
# Path segments of at least this length are redacted on their own as well as within the
# whole path, so an echo of the token segment alone is caught. Shorter segments are taken
# for route names ("hooks", "api", "v1").
# NOTE: 8 is a guess. A token segment shorter than that is redacted only within the whole path.
MIN_SECRET_SEGMENT_CHARS = 8
# Secrets shorter than this are redacted only where they stand as a whole word.
MIN_INNER_SECRET_CHARS = 4
DEFAULT_PORTS = {"http": 80, "https": 443}


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


def _encodings(secret: str) -> set[str]:
    """Return `secret` as a server may echo it: percent-decoded or encoded, or escaped in JSON."""
    return {
        secret,
        urllib.parse.unquote(secret),
        urllib.parse.unquote_plus(secret),
        urllib.parse.quote(secret, safe=""),
        urllib.parse.quote(secret, safe="/"),
        urllib.parse.quote_plus(secret),
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
    }


def redact(text: str, secrets: Iterable[str]) -> str:
    """Replace every secret in `text`, in any case and in its usual encodings, with `<redacted>`."""
    forms = {form for secret in secrets if secret for form in _encodings(secret) if form}
    if not forms:
        return text
    # Longest first, so a whole path or query goes as one piece before its parts are tried.
    # A short secret (a query value such as "1") is redacted only as a whole word, so that
    # "[Errno 111] Connection refused" stays readable.
    pieces = [re.escape(form) if len(form) >= MIN_INNER_SECRET_CHARS else rf"(?<!\w){re.escape(form)}(?!\w)"
              for form in sorted(forms, key=len, reverse=True)]
    return re.sub("|".join(pieces), REDACTED, text, flags=re.IGNORECASE)


def safe_detail(value: Any, secrets: Iterable[str]) -> str:
    """Turn untrusted text (a response body, an exception) into one redacted line of at most ERROR_BODY_CHARS."""
    text = " ".join(redact(str(value), secrets).split())
    if len(text) > ERROR_BODY_CHARS:
        text = text[:ERROR_BODY_CHARS - 1] + "…"
    return text


def url_origin(url: str) -> str:
    """Return `scheme://host:port` of `url`, the only part of it that is safe to log, or "" when it has none."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port or DEFAULT_PORTS.get(parts.scheme.lower())
    except ValueError:
        return ""
    if not parts.scheme or not parts.hostname:
        return ""
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    origin = f"{parts.scheme.lower()}://{host}"
    return f"{origin}:{port}" if port else origin


def url_secrets(url: str, *, path: bool = False) -> list[str]:
    """List the parts of `url` that can carry a credential.

    These are the userinfo with its user, password and Basic credentials, the query string
    with each `name=value` pair and each value, and the fragment. With `path`, they also
    include the path and each of its segments of at least MIN_SECRET_SEGMENT_CHARS.
    """
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return [url]
    secrets: list[str] = []
    userinfo, at, _host = parts.netloc.rpartition("@")
    if at:
        user, _, password = userinfo.partition(":")
        secrets += [userinfo, user, password, basic_credentials(userinfo)]
    if parts.query:
        pairs = re.split("[&;]", parts.query)
        secrets += [parts.query, *pairs]
        secrets += [pair.partition("=")[2] for pair in pairs]
        secrets += [value for _name, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)]
    if parts.fragment:
        secrets.append(parts.fragment)
    if path and parts.path.strip("/"):
        secrets.append(parts.path)
        secrets += [segment for segment in parts.path.split("/") if len(segment) >= MIN_SECRET_SEGMENT_CHARS]
    return [secret for secret in secrets if secret]


def basic_credentials(userinfo: str) -> str:
    """Encode a URL's `user:password` (percent-decoded) for an `Authorization: Basic` header."""
    user, _, password = userinfo.partition(":")
    decoded = f"{urllib.parse.unquote(user)}:{urllib.parse.unquote(password)}"
    return base64.b64encode(decoded.encode()).decode()


def _split_userinfo(url: str) -> tuple[str, str]:
    """Return `url` without its userinfo, and the userinfo ("" when it has none).

    urllib does not strip userinfo and would resolve `user:password@host` as a host name.
    """
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return url, ""  # urllib rejects it when the request is made
    userinfo, at, host = parts.netloc.rpartition("@")
    if not at:
        return url, ""
    return urllib.parse.urlunsplit(parts._replace(netloc=host)), userinfo


class _RejectRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001 - urllib's signature
        return None


_OPENER = urllib.request.build_opener(_RejectRedirects)


def _open(request: urllib.request.Request, timeout: float) -> Any:
    return _OPENER.open(request, timeout=timeout)


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
        return {"raw": raw.decode(errors="replace")}


def _error_text(raw: bytes) -> str:
    """Return an error body as text, with JSON serialized again so that escaped characters are plain."""
    try:
        return json.dumps(json.loads(raw), ensure_ascii=False)
    except ValueError:
        return raw.decode(errors="replace")


def post_json(url: str, payload: dict[str, Any], *, headers: dict[str, str] | None = None,
              secrets: Iterable[str] = (), policy: RetryPolicy = RetryPolicy(), label: str = "",
              body_bytes: bytes | None = None,
              sleep: Callable[[float], None] = time.sleep) -> Any:
    """POST `payload` as JSON and return the decoded response body; raise SendError when it cannot be sent.

    `body_bytes` replaces the serialized payload (a signed webhook body must be sent byte for byte).
    `secrets` are redacted from every error and log line, as are the parts of `url` listed by
    `url_secrets` (without its path: pass `url_secrets(url, path=True)` when the path is secret).
    Userinfo in `url` is sent as `Authorization: Basic` unless `headers` sets Authorization.
    """
    secrets = [url, *url_secrets(url), *secrets]
    data = body_bytes if body_bytes is not None else json.dumps(payload).encode()
    request_headers = {"Content-Type": "application/json", "User-Agent": "hermesd"}
    url, userinfo = _split_userinfo(url)
    if userinfo:
        request_headers["Authorization"] = f"Basic {basic_credentials(userinfo)}"
    request_headers.update(headers or {})
    target = url_origin(url) or "(scheme, host or port missing or invalid)"
    last_error = ""

    for attempt in range(1, policy.attempts + 1):
        wait: float | None = None
        try:
            request = urllib.request.Request(url, data=data, headers=request_headers, method="POST")
            with _open(request, policy.request_timeout) as response:
                return _decode(response.read())
        except urllib.error.HTTPError as error:
            raw = error.read(MAX_ERROR_BODY_BYTES)
            body = _decode(raw)
            last_error = f"HTTP {error.code} from {target}: {safe_detail(_error_text(raw), secrets)}"
            if error.code != 429 and error.code < 500:
                raise SendError(PERMANENT, f"{label}{last_error}") from None
            wait = parse_retry_after(error.headers.get("Retry-After"))
            if wait is None:
                wait = _retry_after_in_body(body)
        except (ValueError, http.client.InvalidURL) as error:
            # A malformed URL, or a header that cannot be encoded. urllib's message for an
            # unknown scheme quotes the whole URL, so it is redacted like the rest.
            raise SendError(PERMANENT, f"{label}cannot build the request to {target}: "
                                       f"{safe_detail(error, secrets)}") from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
            reason = getattr(error, "reason", error)
            last_error = f"cannot reach {target}: {safe_detail(reason, secrets)}"

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
