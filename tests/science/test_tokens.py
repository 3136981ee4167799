"""Byte tokens: the raw bytes of byte-level BPE tokens, read from the embedded tokenizer itself,
and their escaped form (what the explorer shows for tokens that are parts of a character)."""

from __future__ import annotations

import pytest

from context_lookups.precompute.core.settings import EMBEDDED_MODEL
from context_lookups.precompute.core.tokens import escape, escaped, joined_text, partial_tokens, token_bytes


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(EMBEDDED_MODEL)


TEXT = "Price: 5 € or 中文 😀, naïve “quotes”\n\tend"


def test_token_bytes_concatenate_to_the_texts_utf8(tok):
    """The recovered bytes are the tokenizer's: joined they give back the text's UTF-8, byte for
    byte, although several of these tokens decode alone to U+FFFD."""
    ids = tok(TEXT, add_special_tokens=False)["input_ids"]
    raw = token_bytes(tok, ids)
    assert b"".join(raw) == TEXT.encode("utf-8")
    assert any(tok.decode([i]) == "\ufffd" for i in ids)  # the problem this solves


def test_partial_tokens_are_escaped_and_joined(tok):
    partial = partial_tokens(tok)
    ids = tok(" €", add_special_tokens=False)["input_ids"]
    parts = [i for i in ids if i in partial]
    assert parts, "the embedded vocabulary splits € into byte tokens"
    shown = escaped(ids, [tok.decode([i]) for i in ids], partial)
    assert "".join(shown).replace(" ", "") == "\\xe2\\x82\\xac"
    assert all("\ufffd" not in s for s in shown)
    assert [t for t in joined_text(ids, partial) if t is not None] == ["€"] * len(parts)
    # whole tokens are never partial, and every partial token is invalid UTF-8 alone
    assert not any(i in partial for i in tok(" the house", add_special_tokens=False)["input_ids"])
    assert all(escape(b) != b.decode("utf-8", "replace") for b in partial.values())
    assert tok.convert_tokens_to_ids(tok.eos_token) not in partial  # special tokens have no bytes


def test_a_prompt_cut_inside_a_character_shows_what_is_left(tok):
    partial = partial_tokens(tok)
    ids = [i for i in tok("€", add_special_tokens=False)["input_ids"]][1:]  # lead byte cut away
    assert all(i in partial for i in ids)
    joined = joined_text(ids, partial)
    assert len(set(joined)) == 1 and set(joined[0]) == {"\ufffd"}  # continuation bytes alone
