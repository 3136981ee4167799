"""The raw bytes of tokens, so that tokens which are not whole UTF-8 characters can be shown.

A byte-level BPE vocabulary (GPT-2, GPT-NeoX/Pythia, the embedded model) holds tokens that are
parts of a UTF-8 character: GPT-2 writes "€" (``e2 82 ac``) as two or three tokens. Decoded
alone, every such token is U+FFFD "�", so they all look alike. The bytes are recovered from the
tokenizer itself, never guessed from the decoded text:

- byte-level BPE: ``convert_ids_to_tokens`` gives the token in the byte-level alphabet, mapped
  back to bytes by the inverse of transformers' ``bytes_to_unicode`` (as transformers' own
  ``StopStringCriteria`` does);
- SentencePiece byte fallback: a piece ``<0xE2>`` is the byte ``e2``.

Other tokenizers have no byte tokens: their tokens are shown as decoded.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from functools import lru_cache

_BYTE_PIECE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return {c: b for b, c in bytes_to_unicode().items()}


def _is_byte_level(tokenizer) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return hasattr(tokenizer, "byte_decoder")
    from tokenizers import decoders

    return isinstance(backend.decoder, decoders.ByteLevel)


def token_bytes(tokenizer, token_ids: Sequence[int]) -> list[bytes | None]:
    """The raw bytes of each token id, or None where the tokenizer does not say (not a
    byte-level vocabulary, a special token).

    Args:
        tokenizer: a Hugging Face tokenizer.
        token_ids: vocabulary ids.
    """
    pieces = tokenizer.convert_ids_to_tokens([int(i) for i in token_ids])
    special = set(getattr(tokenizer, "all_special_tokens", ()) or ())
    dec = _byte_decoder() if _is_byte_level(tokenizer) else None
    out: list[bytes | None] = []
    for p in pieces:
        if p is None or p in special:
            out.append(None)
        elif (m := _BYTE_PIECE.match(p)) is not None:
            out.append(bytes([int(m.group(1), 16)]))
        elif dec is not None and all(c in dec for c in p):
            out.append(bytes(dec[c] for c in p))
        else:
            out.append(None)
    return out


def is_partial(raw: bytes | None) -> bool:
    """Whether ``raw`` is not a whole UTF-8 text (a token that is part of a character)."""
    if raw is None:
        return False
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def partial_tokens(tokenizer) -> dict[int, bytes]:
    """``{token_id: bytes}`` of the vocabulary's tokens that are not whole UTF-8 characters
    (354 of the embedded model's 8,192; a few hundred in GPT-2's)."""
    n = len(tokenizer)
    raw = token_bytes(tokenizer, range(n))
    return {i: b for i, b in enumerate(raw) if is_partial(b)}


# Control characters written as the byte escapes are: C0 but tab and newline (which have their
# own visible signs), DEL and C1. A NUL or a bare carriage return is then seen, and a CSV reader
# cannot take a token's CR for the end of a row.
_CONTROLS = {c: f"\\x{c:02x}" for c in (*range(0x00, 0x09), *range(0x0B, 0x20), *range(0x7F, 0xA0))}


def escape_controls(text: str) -> str:
    """``text`` with its control characters written ``\\xNN`` (``"\\x00"`` for NUL, ``"\\x0d"``
    for CR); tab and newline are kept."""
    return text.translate(_CONTROLS)


def escape(raw: bytes) -> str:
    """``raw`` as text with every byte that is not part of a whole UTF-8 character written
    ``\\xNN`` (Python's ``backslashreplace``): ``b" \\xe2\\x82"`` → ``" \\xe2\\x82"``; control
    characters too (:func:`escape_controls`)."""
    return escape_controls(raw.decode("utf-8", errors="backslashreplace"))


def escaped(token_ids: Sequence[int], texts: Sequence[str],
            partial: Mapping[int, bytes]) -> list[str]:
    """Each token's text, with the partial tokens (``partial``, see :func:`partial_tokens`)
    written as escaped bytes, and control characters as their byte escapes."""
    return [escape(partial[i]) if i in partial else escape_controls(t)
            for i, t in zip(token_ids, texts, strict=True)]


def joined_text(token_ids: Sequence[int], partial: Mapping[int, bytes]) -> list[str | None]:
    """For each token of a sequence that is a partial token, the text of the run of
    consecutive partial tokens it belongs to, decoded together (``"€"`` for the three tokens
    ``\\xe2``, ``\\x82``, ``\\xac``); None for whole tokens. Bytes still incomplete at either
    end (a prompt cut inside a character) show as U+FFFD."""
    out: list[str | None] = [None] * len(token_ids)
    i = 0
    while i < len(token_ids):
        if token_ids[i] not in partial:
            i += 1
            continue
        j = i
        while j < len(token_ids) and token_ids[j] in partial:
            j += 1
        text = b"".join(partial[t] for t in token_ids[i:j]).decode("utf-8", errors="replace")
        out[i:j] = [text] * (j - i)
        i = j
    return out
