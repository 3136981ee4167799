"""The live fragment's size grows linearly with the prompt (issue 12: an 8.4 KB prompt of 255
tokens used to give a 13 MB fragment, each token's link repeating the encoded prompt twice).

The server here loads a tiny GPT-2 with a 1,024-token context for the web database's runs, so
that prompts of hundreds of tokens are accepted."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import make_tiny_model_dir
from tests.web_fixtures import TOPK_RUN, one, rows

N_CTX = 1024
# Markup per token (a button with its colour, title and escaped text), counted twice since an
# ablated view shows the tokens again, plus the prompt itself a few times (text box, escaped).
PER_TOKEN = 2 * 260
PER_BYTE = 30


@pytest.fixture(scope="module")
def client(web_db, tmp_path_factory):
    from context_lookups.app.main import create_app

    model_dir = make_tiny_model_dir(tmp_path_factory.mktemp("tiny-long"), n_positions=N_CTX)
    app = create_app(db_url=f"sqlite:///{web_db}", token_cap=N_CTX - 1, torch_threads=None,
                     model_paths={s: str(model_dir) for (s,) in rows(web_db, "SELECT slug FROM runs")})
    with TestClient(app) as c:
        yield c


@pytest.fixture(scope="module")
def base(web_db):
    r = one(web_db, "SELECT n.layer, n.neuron FROM neurons n JOIN runs r ON r.id = n.run_id "
            "WHERE r.slug = ? AND n.kind = 'next_token' ORDER BY n.layer, n.neuron LIMIT 1", TOPK_RUN)
    return f"/{TOPK_RUN}/neurons/{r[0]}/{r[1]}"


def fragment(client, base: str, prompt: str, ablate: str | None = None):
    params = {"prompt": prompt, **({"ablate": ablate} if ablate else {})}
    return client.get(base + "/live", params=params, headers={"HX-Request": "true"})


def n_tokens(html: str) -> int:
    return len(re.findall(r'<button type="submit" form="live-form" name="pos"', html))


@pytest.fixture(scope="module")
def fixed(client, base) -> int:
    """Size of a one-token fragment (ablated): the part that does not depend on the prompt."""
    r = fragment(client, base, "a", "L0H0")
    assert r.status_code == 200 and n_tokens(r.text) == 1
    return len(r.content)


def test_255_tokens_of_equals_signs_stay_small(client, base, fixed):
    """The 13 MB case: 255 tokens of ' ' + '=' * 32 (8.4 KB)."""
    prompt = (" " + "=" * 32) * 255
    for ablate in (None, "L0H0"):
        r = fragment(client, base, prompt, ablate)
        assert r.status_code == 200, r.text[:300]
        assert n_tokens(r.text) == 255
        size = len(r.content)
        assert size <= fixed + 12 * len(prompt), f"{size} bytes for a {len(prompt)}-byte prompt"
    # clicking a token is a button of the live form carrying only pos=: the pushed URL of that
    # view is still the whole shareable page URL
    r = client.get(base + "/live", params={"prompt": prompt, "pos": 7}, headers={"HX-Request": "true"})
    assert r.status_code == 200 and r.headers["HX-Push-Url"].endswith("&pos=7")
    assert 'name="pos" value="7" class="tok sel"' in r.text


_ALPHABET = st.one_of(st.sampled_from(list(" \n\t<>&\"'=%?#/;é中😀")), st.characters(
    codec="utf-8", exclude_categories=("Cs",), max_codepoint=0xFFFF))


@given(prompt=st.text(_ALPHABET, min_size=1, max_size=300), ablated=st.booleans())
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_fragment_size_is_linear_in_the_prompt(client, base, fixed, prompt, ablated):
    r = fragment(client, base, prompt, "L0H0" if ablated else None)
    assert r.status_code in (200, 422), r.text[:300]
    if r.status_code == 422:  # nothing to run (blank prompt): one line, small
        assert len(r.content) < 2000
        return
    n = n_tokens(r.text)
    assert 1 <= n <= len(prompt.encode())  # a byte-level BPE token covers at least one byte
    size = len(r.content)
    assert size <= fixed + PER_TOKEN * n + PER_BYTE * len(prompt.encode()), \
        f"{size} bytes for {n} tokens, {len(prompt.encode())} bytes"
