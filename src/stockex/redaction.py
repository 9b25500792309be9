"""Removing credentials from text that leaves the process (Slack alerts, logs of alerts).

:func:`redact` replaces, in any text:

* the literal values of known secrets (``secrets=``, e.g. from :func:`secrets_from_settings`);
* passwords in URLs: ``mysql+pymysql://u:secret@h/db`` -> ``mysql+pymysql://u:***@h/db``;
* secret-looking query parameters: ``?token=abc&x=1`` -> ``?token=***&x=1``;
* ``Authorization``/``Cookie``/``X-Api-Key`` header values, ``Bearer``/``Basic`` credentials;
* anything shaped like a JWT (``eyJ...``), Slack tokens (``xoxb-...``) and webhook paths;
* values of secret-looking keys in ``key=value``, ``key: value``, ``'key': 'value'`` form
  (password, passwd, pwd, secret, token, api_key, credentials, private_key, ...);
* SQLAlchemy's ``[parameters: ...]`` block (bound values may be hashes or personal data).

It errs on the side of hiding too much. :func:`redact_mapping` does the same for context
mappings and hides the whole value of any secret-looking key. Neither ever raises.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

if TYPE_CHECKING:
    from stockex.config import Settings

REDACTED = "***"
#: Shorter configured secrets (e.g. a dev password "stockex") are left to the patterns, so
#: that ordinary words in messages are not blanked out.
MIN_LITERAL_SECRET = 8

_SENSITIVE_NAME = (
    r"[\w-]*(?:password|passwd|pwd|secret|token|api[_-]?key|credentials?|private[_-]?key"
    r"|session[_-]?id)[\w-]*"
)
SECRET_KEY_NAME = re.compile(rf"(?i)^(?:{_SENSITIVE_NAME}|authorization|proxy-authorization|cookie"
                             r"|set-cookie|x-api-key)$")

_URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.\-]*://[^:/?#@\s]*):[^/?#\s]+@")
_QUERY_SECRET = re.compile(
    r"(?i)(?P<head>[?&;](?:[\w.\-]*(?:token|password|passwd|pwd|secret|key|signature|sig|auth"
    r"|credential|code)[\w.\-]*)=)[^&#\s'\"]*"
)
_HEADER = re.compile(
    r"(?i)(?P<head>\b(?:proxy-)?authorization|\bset-cookie|\bcookie|\bx-api-key)"
    r"(?P<sep>[\"']?[ \t]*[:=][ \t]*[\"']?)[^\"'`\r\n]*"
)
_BEARER = re.compile(r"(?i)\b(?P<head>bearer|basic)\s+[A-Za-z0-9._~+/=\-]{6,}")
_JWT = re.compile(r"\beyJ[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+(?:\.[A-Za-z0-9_\-]*)?")
_SLACK_TOKEN = re.compile(r"\bxox[a-z]-[A-Za-z0-9\-]+")
_SLACK_HOOK = re.compile(r"(?P<head>/services/)[A-Za-z0-9]+/[A-Za-z0-9]+/[A-Za-z0-9]+")
# A name starts where a run of [\w-] starts: with \b it could start after every "-" of a run,
# and each start scans the rest of the run (a 4 KB path "/a-a-a-...-key" cost a second).
_KEY_VALUE = re.compile(
    rf"(?i)(?P<head>(?<![\w-]){_SENSITIVE_NAME}[\"']?[ \t]*[:=][ \t]*)"
    r"(?:(?P<q>[\"'])(?:(?!(?P=q)).)*(?P=q)|[^\s,;&)}\]]+)"
)
_SQL_PARAMETERS = re.compile(r"\[parameters: [^\n]*\]")
#: Lower-cased text that each pattern above needs to find (a superset: a hit only means "look
#: closer"). Most log lines (one access-log line per request) contain none of it and skip the
#: nine scans.
_CLUES = (
    "[parameters: ", "://", "token", "passw", "pwd", "secret", "key", "sig", "auth",
    "credential", "code", "cookie", "bearer", "basic", "eyj", "xox", "/services/", "session",
)


def _may_hold_secrets(text: str) -> bool:
    lowered = text.lower()
    return any(clue in lowered for clue in _CLUES)


def _keep_head(replacement: str = REDACTED):  # type: ignore[no-untyped-def]
    def sub(match: re.Match[str]) -> str:
        return match.group("head") + replacement

    return sub


def _key_value(match: re.Match[str]) -> str:
    quote = match.group("q") or ""
    return f"{match.group('head')}{quote}{REDACTED}{quote}"


def _header(match: re.Match[str]) -> str:
    return f"{match.group('head')}{match.group('sep')}{REDACTED}"


def redact(text: Any, secrets: Iterable[str] = ()) -> str:
    """``text`` (made a string) with every credential replaced by ``***`` (see module doc)."""
    try:
        out = text if isinstance(text, str) else str(text)
    except Exception:  # noqa: BLE001 - a broken __str__ must not break alerting
        return "<unprintable>"
    literals = {s for s in secrets if s and len(s) >= MIN_LITERAL_SECRET}
    for secret in sorted(literals, key=len, reverse=True):
        out = out.replace(secret, REDACTED)
    if not _may_hold_secrets(out):
        return out
    out = _SQL_PARAMETERS.sub(f"[parameters: {REDACTED}]", out)
    out = _URL_PASSWORD.sub(lambda m: f"{m.group('head')}:{REDACTED}@", out)
    out = _QUERY_SECRET.sub(_keep_head(), out)
    out = _HEADER.sub(_header, out)
    out = _BEARER.sub(lambda m: f"{m.group('head')} {REDACTED}", out)
    out = _JWT.sub(REDACTED, out)
    out = _SLACK_TOKEN.sub(REDACTED, out)
    out = _SLACK_HOOK.sub(_keep_head(), out)
    out = _KEY_VALUE.sub(_key_value, out)
    return out


def redact_mapping(values: Mapping[str, Any], secrets: Iterable[str] = ()) -> dict[str, str]:
    """Each value redacted as text; values of secret-looking keys hidden entirely."""
    secrets = tuple(secrets)
    out: dict[str, str] = {}
    for key, value in values.items():
        name = str(key)
        if SECRET_KEY_NAME.match(name):
            out[name] = REDACTED
        else:
            out[name] = redact(value, secrets)
    return out


def secrets_from_settings(settings: Settings) -> tuple[str, ...]:
    """The literal secrets a configuration holds: signing key, Slack credentials, passwords."""
    from sqlalchemy.engine import make_url

    found = [settings.secret_key, settings.slack.token, settings.slack.webhook_url]
    for url in (settings.database.url, settings.redis.url):
        if not url:
            continue
        try:
            password = make_url(url).password
        except Exception:  # noqa: BLE001 - not a URL SQLAlchemy knows; patterns still apply
            password = None
        if password:
            found += [str(password), unquote(str(password))]
    return tuple(s for s in found if s)
