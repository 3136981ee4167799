"""The embedded default (issue 2): a real language model and scan corpus, loaded like gpt2."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import pytest
import torch

from context_lookups.precompute.core.errors import ModelNotAvailable
from context_lookups.precompute.core.settings import EMBEDDED_CORPUS, EMBEDDED_MODEL
from context_lookups.precompute.corpus import load_corpus
from context_lookups.precompute.model.loading import load_model

# Stated bound on held-out loss (nats/token) over the first 64 documents of the held-out scan
# split, which the model never saw in training. MODEL_CARD.md gives the measured value; the
# unigram entropy of the corpus is about 6.6 nats/token.
HELDOUT_LOSS_BOUND = 4.6


@pytest.fixture(scope="module")
def embedded():
    return load_model(EMBEDDED_MODEL)


@pytest.fixture(scope="module")
def embedded_bridge():
    """The embedded model on the bridge backend: its TransformerBridge computes the loss."""
    return load_model(EMBEDDED_MODEL, backend="bridge")


def test_embedded_model_loads_through_the_same_function_as_gpt2(embedded, embedded_bridge):
    for m in (embedded, embedded_bridge):
        d = m.dims
        assert (d.n_layers, d.d_model, d.n_heads, d.d_mlp, d.n_ctx, d.d_vocab) == (4, 256, 8, 1024, 256, 8192)
        assert m.slug == "embedded" and d.architecture == "GPT2LMHeadModel"
        # weight processing is on: the unembedding is centred (center_unembed)
        assert m.backend.W_U().mean(-1).abs().max() < 1e-4
    assert embedded.backend.name == "fast (gpt2)" and embedded_bridge.backend.name == "bridge"
    assert type(embedded_bridge.backend.bridge).__name__ == "TransformerBridge"
    files = {p.name for p in Path(EMBEDDED_MODEL).iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "MODEL_CARD.md", "loss_curve.png"} <= files
    assert (Path(EMBEDDED_MODEL) / "model.safetensors").stat().st_size <= 20 * 1024 * 1024
    config = json.loads((Path(EMBEDDED_MODEL) / "config.json").read_text())
    assert config["architectures"] == ["GPT2LMHeadModel"]


@pytest.mark.parametrize("text", ["In the beginning God created the heaven and the earth.",
                                  "def f(x):\n    return x ** 2  # squares <b>&amp;</b>",
                                  "Unicode: naïve café — 中文 🙂 \t tabs"])
def test_tokenizer_round_trips(embedded, text):
    ids = embedded.encode(text)
    assert embedded.tokenizer.decode(ids) == text
    assert embedded.bos_token_id == embedded.tokenizer.convert_tokens_to_ids("<|endoftext|>") == 0
    assert len(embedded.tokenizer) == 8192


def test_heldout_loss_is_below_the_stated_bound(embedded_bridge):
    embedded = embedded_bridge
    docs = [r["text"] for r in load_corpus(EMBEDDED_CORPUS, n_docs=64)["heldout"]]
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(docs), 16):
            for text in docs[i:i + 16]:
                ids = torch.tensor([[embedded.bos_token_id] + embedded.encode(text)[:255]])
                loss = embedded.backend.bridge(ids, return_type="loss")
                total += float(loss) * (ids.shape[1] - 1)
                count += ids.shape[1] - 1
    loss = total / count
    assert loss < HELDOUT_LOSS_BOUND, f"held-out loss {loss:.3f} (perplexity {math.exp(loss):.1f})"


def test_greedy_continuation_is_english(embedded_bridge):
    embedded = embedded_bridge
    ids = torch.tensor([[0] + embedded.encode("In the beginning God")])
    with torch.no_grad():
        for _ in range(8):
            nxt = embedded.backend.bridge(ids)[0, -1].argmax()
            ids = torch.cat([ids, nxt.view(1, 1)], 1)
    text = embedded.tokenizer.decode(ids[0, 1:].tolist())
    words = text.split()
    assert len(words) >= 6 and sum(w.strip(".,;:").isalpha() for w in words) >= len(words) - 2, text


def test_gpt2_offline_gives_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotAvailable) as err:
        load_model("gpt2")
    msg = str(err.value)
    assert "'gpt2'" in msg and "not in the local Hugging Face cache" in msg and "hub is unreachable" in msg
    assert "embedded default" in msg and "local Hugging Face directory" in msg


def test_scan_corpus_splits_are_disjoint_and_redistributable():
    corpus = load_corpus(EMBEDDED_CORPUS)
    explain, heldout = set(corpus["explain"]["text"]), set(corpus["heldout"]["text"])
    assert len(explain) > 1000 and len(heldout) > 500 and not explain & heldout
    sources = set()
    for split in ("explain", "heldout"):
        with gzip.open(Path(EMBEDDED_CORPUS) / f"{split}.jsonl.gz", "rt") as fh:
            sources |= {json.loads(line)["source"] for line in fh}
    assert sources == {"python-docs", "bible-kjv", "fortunes", "jargon", "wikipedia"}  # no linux-doc
    size = sum(p.stat().st_size for p in Path(EMBEDDED_CORPUS).glob("*.jsonl.gz"))
    assert size < 5 * 1024 * 1024
