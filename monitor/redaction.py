"""Credential redaction for anything that may be printed, logged, stored or labelled.

``redact_url("rtsp://user:pw@cam/stream?token=abc")`` gives
``"rtsp://***@cam/stream?token=***"``: user info and the values of query
parameters that look like secrets are replaced. ``redact_text(message)`` does the
same to every URL inside a message and leaves the rest of the message as it is.
Leaf module.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

SECRET_PARAMS = frozenset(
    {
        "token",
        "access_token",
        "auth",
        "key",
        "apikey",
        "api_key",
        "password",
        "pass",
        "pwd",
        "secret",
        "signature",
        "sig",
        "x-amz-signature",
        "jwt",
        "session",
        "sentinel_password",
        "credential",
    }
)
MASK = "***"


def redact_url(url: str) -> str:
    """Return ``url`` with user info and secret-looking query values masked.

    Strings that do not parse as URLs are returned masked whole if they contain
    an ``@`` (possible credentials), else unchanged.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return MASK if "@" in url else url
    netloc = parts.netloc
    if "@" in netloc:
        netloc = MASK + "@" + netloc.rsplit("@", 1)[1]
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode(
            [(k, MASK if k.lower() in SECRET_PARAMS else v) for k, v in pairs], safe="*"
        )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s\"'<>]+")
_TRAILING = ":,;.)]}"


def _redact_match(m: re.Match[str]) -> str:
    url = m.group(0)
    # "URL: reason" and "(URL)": the punctuation after a URL belongs to the sentence
    core = url.rstrip(_TRAILING)
    return redact_url(core) + url[len(core):]


def redact_text(text: str) -> str:
    """``text`` with every URL in it redacted by :func:`redact_url` and every other
    character kept (a message run through :func:`redact_url` whole is garbled: its
    words become a percent-encoded query, or are cut off as a secret's value)."""
    return _URL_IN_TEXT.sub(_redact_match, text)
