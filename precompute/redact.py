"""Secrets out of messages: an API key, and anything shaped like one, is replaced before a
message is logged, stored in the database or shown on a page.

An OpenAI-compatible endpoint may echo the request back in its error body ("you sent
``Authorization: Bearer sk-...``"); the openai client puts that body in the exception's message.
"""

from __future__ import annotations

import logging
import re

REDACTED = "[redacted]"
# A bearer token (whatever its shape), and OpenAI-style keys (sk-..., sk-proj-...) anywhere.
_BEARER = re.compile(r"(?i)\b(bearer)(\s+|%20)[^\s\"',;}\]]+")
_SK_KEY = re.compile(r"\bsk-[A-Za-z0-9_\-]{6,}")
_MIN_SECRET = 4  # shorter "secrets" (placeholders such as "x") are not searched for verbatim


def redact(text: str | None, *secrets: str | None) -> str | None:
    """``text`` with every verbatim occurrence of ``secrets`` (e.g. the API key in use), every
    bearer token and every ``sk-...`` key replaced by ``[redacted]``. None stays None."""
    if not text:
        return text
    for s in secrets:
        if s and len(s) >= _MIN_SECRET:
            text = text.replace(s, REDACTED)
    text = _BEARER.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
    return _SK_KEY.sub(REDACTED, text)


class RedactingFilter(logging.Filter):
    """A logging filter (for handlers) that formats each record's message and redacts it:
    a key that reaches a log call by any path is still not written out."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        clean = redact(msg)
        if clean != msg:
            record.msg, record.args = clean, None
        if record.exc_info and record.exc_info[1] is not None:
            exc_text = logging.Formatter().formatException(record.exc_info)
            if redact(exc_text) != exc_text:
                record.exc_info, record.exc_text = None, None
                record.msg = f"{record.msg}\n{redact(exc_text)}"
        return True
