"""Secrets out of messages, answers and URLs: the one home of the rule. An API key, the
credentials of a URL, and anything shaped like a credential are replaced by ``[redacted]``
before a text is logged, stored in the database or shown on a page.

An OpenAI-compatible endpoint may echo what it was sent, in an error body ("you sent
``Authorization: Bearer sk-...``") or in a 200 answer ("Yes. debug: Bearer sk-..."). What was
sent includes the key (``Authorization: Bearer KEY``), the userinfo of ``--llm-base-url``
(httpx sends ``user:pass`` as ``Authorization: Basic base64(user:pass)``) and its query
(``?api-key=...``, percent-encoded). :func:`secret_forms` lists every encoding a credential went
out in; :func:`redact` removes those and the generic shapes (bearer and basic tokens, ``sk-``
keys, URL userinfo, secret-looking query values). Redaction is idempotent:
``redact(redact(t)) == redact(t)``.

A known secret is matched in the encodings an endpoint, a page or a log is likely to give it
back in, written once here (:func:`secret_forms` for whole-string encodings, :func:`_secret_pattern`
for per-character ones, in any mix): any letter case; hex of its bytes; base64 of it, of
``user:pass`` and of any text holding it (``Bearer KEY``: the part of the base64 that depends
only on the key, for each of the 3 alignments); each character as itself, percent-encoded once
or more (``%2F``, ``%252F``), an HTML character reference (``&#x2F;``, ``&#47;``, ``&sol;``) or
a JSON escape (``\\/``, ``\\u002f``).
"""

from __future__ import annotations

import base64
import html.entities
import logging
import re
import threading
from functools import lru_cache
from urllib.parse import SplitResult, unquote, urlsplit

REDACTED = "[redacted]"
_NOT_DONE = r"(?!\[redacted\])"  # a token already redacted is left as it is (idempotence)
# An HTTP bearer or basic credential, and OpenAI-style keys (sk-..., sk-proj-...). The words
# "bearer" and "basic" also occur in prose ("the bearer of", "basic settings"): a bearer token
# has a digit or 20+ characters, a basic one is base64 of "user:password".
_BEARER = re.compile(r"(?i)\b(bearer|basic)(\s+|%20|\+)" + _NOT_DONE + r"([^\s\"',;}\]]+)")
_SK_KEY = re.compile(r"\bsk-[A-Za-z0-9_\-]{6,}")
# scheme://userinfo@host: the userinfo (user, password or token) is a credential.
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)" + _NOT_DONE + r"[^/?#@\s\"'<>]+@")
# A query or form parameter whose name says it holds a secret: api-key=..., token=..., sig=...
_SECRET_NAME = r"[\w.\-]*(?:key|token|secret|passw|pwd|auth|sig|credential)[\w.\-]*"
_SECRET_PARAM = re.compile(r"(?i)([?&;]" + _SECRET_NAME + r"=)" + _NOT_DONE + r"[^&#\s\"'<>]+")
_MIN_SECRET = 4  # shorter "secrets" (placeholders such as "x") are not searched for verbatim

_known: set[str] = set()  # secrets in use in this process (register_secret), for log lines
_known_lock = threading.Lock()


_ENTITY_NAMES: dict[str, list[str]] = {}
for _name, _ch in html.entities.html5.items():
    if _name.endswith(";") and len(_ch) == 1 and ord(_ch) < 128:
        _ENTITY_NAMES.setdefault(_ch, []).append(re.escape(_name))
del _name, _ch


def _secret_pattern(secret: str) -> str:
    """A regex (matched ignoring case) for ``secret`` with each character as itself,
    percent-encoded once or more (``%2F``, ``%252F``; ``+`` for a space), as an HTML character
    reference (``&#x2F;``, ``&#47;``, ``&sol;``) or a JSON escape (``\\/``, ``\\u002F``)."""
    out = []
    for ch in secret:
        code = ord(ch)
        alts = [re.escape(ch), "".join(f"%(?:25)*{b:02x}" for b in ch.encode()),
                f"&#x0*{code:x};", f"&#0*{code};", f"\\\\u{code:04x}"]
        alts += [f"&{n}" for n in _ENTITY_NAMES.get(ch, [])]
        if ch == " ":
            alts.append(r"\+")
        if ch == "/":
            alts.append(r"\\/")
        out.append("(?:" + "|".join(alts) + ")")
    return "".join(out)


@lru_cache(maxsize=64)
def _secrets_regex(forms: tuple[str, ...]) -> re.Pattern:
    return re.compile("|".join(_secret_pattern(f) for f in forms), re.IGNORECASE)


def _base64_cores(data: bytes) -> list[str]:
    """The base64 characters that encode ``data`` whatever bytes come before and after it:
    one string per alignment (0, 1 or 2 bytes before it in its group of 3)."""
    out = []
    for k in range(3):
        enc = base64.b64encode(b"\0" * k + data + b"\0\0").decode()
        first = (8 * k + 5) // 6  # characters holding bits of the bytes before
        last = (8 * (k + len(data))) // 6  # characters holding only bits of ``data``
        out.append(enc[first:last])
    return out


def secret_forms(secret: str | None) -> list[str]:
    """``secret`` and the whole-string encodings it may travel in (the per-character ones,
    percent-encoding, HTML references and JSON escapes, :func:`redact` matches in any mix):
    hex of its bytes; base64 of it (as ``user:pass`` goes out in a Basic header) and the part of
    the base64 of any text holding it (``Bearer KEY``, an ``Authorization`` header) that
    encodes only it. Empty for a secret shorter than 4 characters."""
    if not secret or len(secret) < _MIN_SECRET:
        return []
    raw = secret.encode()
    b64 = base64.b64encode(raw).decode()
    cores = [c for c in _base64_cores(raw) if len(c) >= _MIN_SECRET]
    return list(dict.fromkeys([secret, raw.hex(), b64, b64.rstrip("="), *cores]))


def url_secrets(url: str | None) -> list[str]:
    """The credentials a URL carries: its userinfo (the password, or a user without one, and
    ``user:pass`` as a Basic header sends it) and the values of its secret-looking query
    parameters, decoded."""
    if not url:
        return []
    try:
        parts = urlsplit(url)
    except ValueError:
        return []
    out = []
    if parts.username or parts.password:  # a user without password is a token (https://TOKEN@host)
        user, pw = unquote(parts.username or ""), unquote(parts.password or "")
        out += [pw, f"{user}:{pw}"] if pw else [user, f"{user}:"]
    for m in _SECRET_PARAM.finditer("?" + parts.query):
        out.append(unquote(m.group(0)[len(m.group(1)):]))
    return [s for s in out if len(s) >= _MIN_SECRET]


def register_secret(*secrets: str | None) -> None:
    """Add secrets in use (an API key, a URL's credentials) to those every log line is cleaned
    of (:class:`RedactingFilter`), in all their :func:`secret_forms`."""
    with _known_lock:
        for s in secrets:
            _known.update(secret_forms(s))


def redact(text: str | None, *secrets: str | None) -> str | None:
    """``text`` with every occurrence of ``secrets`` (e.g. the API key in use) in any of their
    :func:`secret_forms` and percent-encodings, every bearer/basic token, ``sk-...`` key, URL
    userinfo and secret-looking query value replaced by ``[redacted]``. None stays None;
    idempotent."""
    if not text:
        return text
    forms = tuple(sorted({f for s in secrets for f in secret_forms(s)}, key=lambda f: (-len(f), f)))
    if forms:
        text = _secrets_regex(forms).sub(REDACTED, text)
    text = _BEARER.sub(_auth_token, text)
    text = _SK_KEY.sub(REDACTED, text)
    text = _USERINFO.sub(lambda m: f"{m.group(1)}{REDACTED}@", text)
    return _SECRET_PARAM.sub(lambda m: f"{m.group(1)}{REDACTED}", text)


def _auth_token(m: re.Match) -> str:
    scheme, token = m.group(1), m.group(3)
    if scheme.lower() == "bearer":
        secret = len(token) >= 20 or (len(token) >= 6 and any(c.isdigit() for c in token))
    else:
        try:
            secret = ":" in base64.b64decode(token + "=" * (-len(token) % 4), validate=True).decode()
        except ValueError:  # binascii.Error and UnicodeDecodeError are ValueErrors
            secret = False
    return f"{scheme}{m.group(2)}{REDACTED}" if secret else m.group(0)


def redact_tree(value, *secrets: str | None):
    """Every string inside ``value`` (dicts, lists: a JSON response) passed through
    :func:`redact`; other values unchanged."""
    if isinstance(value, str):
        return redact(value, *secrets)
    if isinstance(value, dict):
        return {k: redact_tree(v, *secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_tree(v, *secrets) for v in value]
    return value


def mask_url(url: str | None) -> str | None:
    """``url`` as it may be stored or printed: userinfo and secret-looking query values
    replaced by ``[redacted]`` (``http://[redacted]@host/v1?api-key=[redacted]``)."""
    if not url:
        return url
    try:
        p = urlsplit(url)
    except ValueError:
        return redact(url)
    netloc = p.netloc
    if "@" in netloc:
        netloc = f"{REDACTED}@{netloc.rsplit('@', 1)[1]}"
    query = _SECRET_PARAM.sub(lambda m: f"{m.group(1)}{REDACTED}", "?" + p.query)[1:] if p.query else ""
    return redact(SplitResult(p.scheme, netloc, p.path, query, p.fragment).geturl())


def mask_db_url(url: str | None) -> str | None:
    """A database URL as it may be printed: SQLAlchemy's rendering with the password hidden
    (``postgresql+psycopg://user:***@host/db``), and so is a secret-looking query parameter
    (``?password=***``); a string that does not parse, redacted."""
    if not url:
        return url
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        shown = make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return redact(url)
    # a password may also come as a query parameter (?password=...): masked the same way
    return _SECRET_PARAM.sub(lambda m: f"{m.group(1)}***", shown)


class RedactingFilter(logging.Filter):
    """A logging filter (for handlers) that formats each record's message and redacts it (the
    generic shapes and every :func:`register_secret`): a key or a URL's credentials that reach
    a log call by any path are still not written out."""

    def filter(self, record: logging.LogRecord) -> bool:
        with _known_lock:
            known = tuple(_known)
        msg = record.getMessage()
        clean = redact(msg, *known)
        if clean != msg:
            record.msg, record.args = clean, None
        if record.exc_info and record.exc_info[1] is not None:
            exc_text = logging.Formatter().formatException(record.exc_info)
            if redact(exc_text, *known) != exc_text:
                record.exc_info, record.exc_text = None, None
                record.msg = f"{record.msg}\n{redact(exc_text, *known)}"
        return True
