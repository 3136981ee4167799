"""Reproduce the embedded default model and scan corpus from nothing.

Run once by a developer (not by CI); its output under ``precompute/embedded/`` is committed.

    apt-get install -y python3.11-doc bible-kjv fortunes jargon-text linux-doc
    pip install gensim matplotlib          # gensim: Wikipedia test articles + wiki-markup filter
    python scripts/build_embedded.py all   # = extract, tokenizer, train, card

Steps (each can be run alone):

- ``extract``: real, redistributable English text from Debian packages and gensim's wheel,
  split into paragraph-aligned documents, each assigned by a hash of its text to
  ``train`` (training), ``val`` (held-out loss), ``explain`` / ``heldout`` (the scan corpus's
  two disjoint splits, docs/method.md §2). linux-doc (GPL-2) goes to training only: it is never
  shipped as text.
- ``tokenizer``: byte-level BPE, 8,192 tokens, ``<|endoftext|>`` as BOS/EOS (``tokenizers``).
- ``train``: a GPT-2 (``GPT2LMHeadModel``) trained on packed 256-token sequences with AdamW
  and a warm-up + cosine schedule. The schedule runs on ``progress = max(tokens / target,
  seconds / budget)`` so the run ends inside its wall-clock budget on a shared 2-core machine.
- ``card``: the model card (sources and licences, architecture, training, loss curve,
  held-out loss and perplexity against the corpus's unigram entropy, five continuations).
"""

from __future__ import annotations

import argparse
import bz2
import glob
import gzip
import hashlib
import json
import math
import os
import random
import re
import subprocess
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "precompute" / "embedded"
MODEL_DIR = OUT / "model"
CORPUS_DIR = OUT / "corpus"
WORK = Path(os.environ.get("LOOKUPS_BUILD_DIR", "/tmp/lookups-build"))

CHUNK_CHARS = 1200  # ~ 256 tokens: one scan document fills about one context window
# Documents shipped per scan split (after a seeded shuffle); None ships the whole split. Every
# explain/heldout document is shipped (3,889 and 1,935): with 1,200/600 the embedded run's
# ablation effect and E were too noisy to tell from nothing (docs/method.md §8), and the whole
# splits keep the default job within 5 minutes on 2 CPU cores.
SCAN_DOCS: dict[str, int | None] = {"explain": None, "heldout": None}
SOURCES = {
    "python-docs": "Python 3.11 documentation (Debian python3.11-doc), PSF License 2.0, "
    "(c) Python Software Foundation",
    "bible-kjv": "King James Version of the Bible (Debian bible-kjv-text), public domain",
    "fortunes": "BSD fortune cookie files (Debian fortunes, non-offensive set), BSD licence",
    "jargon": "The Jargon File 4.4.7 (Debian jargon-text), public domain",
    "wikipedia": "English Wikipedia articles shipped in gensim's test data "
    "(enwiki-latest-pages-articles1 shortened), CC BY-SA 3.0, (c) Wikipedia contributors",
    "linux-doc": "Linux kernel documentation 6.1 (Debian linux-doc-6.1), GPL-2.0: "
    "training only, never shipped as text",
}


# ----------------------------------------------------------------------------- extract
def _paragraphs(text: str) -> list[str]:
    """Split on blank lines, join wrapped lines, drop paragraphs that are mostly not prose."""
    out = []
    for para in re.split(r"\n\s*\n", text):
        para = re.sub(r"\s+", " ", para).strip()
        if len(para) < 20:
            continue
        letters = sum(c.isalpha() or c == " " for c in para)
        if letters / len(para) < 0.75:
            continue
        out.append(para)
    return out


def _chunks(paragraphs: list[str], limit: int = CHUNK_CHARS) -> list[str]:
    """Pack consecutive paragraphs into documents of at most ``limit`` characters."""
    docs, cur = [], ""
    for p in paragraphs:
        if cur and len(cur) + len(p) + 2 > limit:
            docs.append(cur)
            cur = ""
        cur = p if not cur else cur + "\n\n" + p
        while len(cur) > limit * 2:  # a very long paragraph: cut at a sentence end
            cut = cur.rfind(". ", 0, limit) + 1 or limit
            docs.append(cur[:cut].strip())
            cur = cur[cut:].strip()
    if cur:
        docs.append(cur)
    return docs


def _python_docs() -> list[str]:
    docs = []
    for f in sorted(glob.glob("/usr/share/doc/python3.11/html/_sources/**/*.rst.txt", recursive=True)):
        text = Path(f).read_text(errors="replace")
        text = re.sub(r"^\.\. .*$", "", text, flags=re.M)  # directives
        text = re.sub(r"^[=\-~^\"*#+]{3,}\s*$", "", text, flags=re.M)  # heading rules
        text = re.sub(r":[a-z:]+:`~?([^`<]*?)(?: <[^>]*>)?`", r"\1", text)  # roles
        text = text.replace("``", "")
        docs += _chunks(_paragraphs(text))
    return docs


def _bible() -> list[str]:
    raw = subprocess.run(["bible", "-f", "Ge1:1-Re22:21"], capture_output=True, text=True,
                         check=True).stdout
    chapters: dict[str, list[str]] = {}
    for line in raw.splitlines():
        m = re.match(r"^(\d?[A-Za-z]+\d+):\d+ (.*)$", line)
        if m:
            chapters.setdefault(m.group(1), []).append(m.group(2).strip())
    docs = []
    for verses in chapters.values():
        docs += _chunks([" ".join(verses[i:i + 4]) for i in range(0, len(verses), 4)])
    return docs


def _fortunes() -> list[str]:
    docs = []
    for f in sorted(glob.glob("/usr/share/games/fortunes/*")):
        if f.endswith((".dat", ".u8")) or os.path.isdir(f) or "art" in os.path.basename(f):
            continue
        items = [re.sub(r"[ \t]+", " ", x).strip()
                 for x in Path(f).read_text(errors="replace").split("\n%\n")]
        items = [x for x in items
                 if len(x) > 20 and sum(c.isalpha() or c.isspace() for c in x) / len(x) > 0.75]
        docs += _chunks(items)
    return docs


def _jargon() -> list[str]:
    with gzip.open("/usr/share/doc/jargon-text/jargon.txt.gz", "rt", errors="replace") as fh:
        text = fh.read()
    return _chunks(_paragraphs(text))


def _wikipedia() -> list[str]:
    from gensim.corpora.wikicorpus import extract_pages, filter_wiki

    whl = glob.glob(str(WORK / "gensim-*.whl"))
    if not whl:
        subprocess.run(["pip", "download", "--no-deps", "gensim", "-d", str(WORK)], check=True)
        whl = glob.glob(str(WORK / "gensim-*.whl"))
    name = "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
    with zipfile.ZipFile(whl[0]) as z, z.open(name) as fh, bz2.open(fh) as xml:
        docs = []
        for title, text, _pageid in extract_pages(xml):
            if text.lower().startswith("#redirect"):
                continue
            clean = filter_wiki(text)
            clean = re.sub(r"^=+\s*(.*?)\s*=+\s*$", r"\1", clean, flags=re.M)
            clean = re.sub(r"^\s*[*#:;|!].*$", "", clean, flags=re.M)
            docs += _chunks(_paragraphs(title + "\n\n" + clean))
    return docs


def _linux_doc() -> list[str]:
    docs = []
    for f in sorted(glob.glob("/usr/share/doc/linux-doc-6.1/Documentation/**/*.rst*", recursive=True)):
        opener = gzip.open if f.endswith(".gz") else open
        with opener(f, "rt", errors="replace") as fh:
            text = fh.read()
        text = re.sub(r"^\.\. .*$", "", text, flags=re.M)
        text = re.sub(r"^[=\-~^\"*#+]{3,}\s*$", "", text, flags=re.M)
        docs += _chunks(_paragraphs(text))
    return docs


def _split_of(text: str) -> str:
    """Deterministic split by a hash of the document: 69% train, 1% val, 20% explain, 10% heldout."""
    h = int(hashlib.sha1(text.encode()).hexdigest()[:8], 16) % 100
    return "val" if h < 1 else "explain" if h < 21 else "heldout" if h < 31 else "train"


def extract() -> None:
    WORK.mkdir(parents=True, exist_ok=True)
    CORPUS_DIR.mkdir(parents=True, exist_ok=True)
    readers = {"python-docs": _python_docs, "bible-kjv": _bible, "fortunes": _fortunes,
               "jargon": _jargon, "wikipedia": _wikipedia, "linux-doc": _linux_doc}
    splits: dict[str, list[dict]] = {"train": [], "val": [], "explain": [], "heldout": []}
    stats = {}
    for source, read in readers.items():
        docs = list(dict.fromkeys(read()))  # exact duplicates removed
        stats[source] = {"documents": len(docs), "chars": sum(map(len, docs))}
        for d in docs:
            split = _split_of(d)
            if source == "linux-doc" and split in ("explain", "heldout"):
                split = "train"  # GPL-2 text is never shipped
            splits[split].append({"text": d, "source": source})
        print(f"{source:12s} {len(docs):7d} docs {stats[source]['chars'] / 1e6:6.1f} MB")
    for name in ("train", "val"):
        with open(WORK / f"{name}.jsonl", "w") as fh:
            for r in splits[name]:
                fh.write(json.dumps(r) + "\n")
    for name in ("explain", "heldout"):
        rows = splits[name]
        random.Random(0).shuffle(rows)
        rows = rows[:SCAN_DOCS[name]]
        with gzip.open(CORPUS_DIR / f"{name}.jsonl.gz", "wt", compresslevel=9) as fh:
            for r in rows:
                fh.write(json.dumps(r, ensure_ascii=False) + "\n")
    stats["splits"] = {k: len(v) for k, v in splits.items()}
    (WORK / "extract_stats.json").write_text(json.dumps(stats, indent=2))
    print(json.dumps(stats["splits"]))


# ----------------------------------------------------------------------------- tokenizer
def tokenizer() -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=8192, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  min_frequency=2, show_progress=True)

    def texts():
        with open(WORK / "train.jsonl") as fh:
            for line in fh:
                yield json.loads(line)["text"]

    tok.train_from_iterator(texts(), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>",
                                   eos_token="<|endoftext|>", unk_token="<|endoftext|>",
                                   model_max_length=256)
    MODEL_DIR.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(MODEL_DIR)
    print("vocab", tok.get_vocab_size())


def _encode_split(name: str):
    import numpy as np
    from transformers import AutoTokenizer

    cache = WORK / f"{name}.tokens.npy"
    if cache.exists():
        return np.load(cache)
    tok = AutoTokenizer.from_pretrained(MODEL_DIR)
    with open(WORK / f"{name}.jsonl") as fh:
        texts = [json.loads(line)["text"] for line in fh]
    random.Random(1).shuffle(texts)
    ids: list[int] = []
    for i in range(0, len(texts), 1000):
        for enc in tok(texts[i:i + 1000])["input_ids"]:
            ids.append(tok.eos_token_id)  # <|endoftext|> separates (and begins) documents
            ids.extend(enc)
    arr = np.asarray(ids, dtype=np.uint16)
    np.save(cache, arr)
    return arr


# ----------------------------------------------------------------------------- train
def train(target_tokens: int, budget_s: float, batch: int, lr: float) -> None:
    import numpy as np
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count() or 2)
    data, val = _encode_split("train"), _encode_split("val")
    print(f"train tokens available {len(data):,}; val tokens {len(val):,}")
    ctx = 256
    cfg = GPT2Config(vocab_size=8192, n_positions=ctx, n_embd=256, n_layer=4, n_head=8,
                     n_inner=1024, activation_function="gelu_new", resid_pdrop=0.0,
                     embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0,
                     tie_word_embeddings=True)
    model = GPT2LMHeadModel(cfg)
    n_params = sum(p.numel() for p in model.parameters())
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.95))
    n_seq = (len(data) - 1) // ctx
    order = np.random.default_rng(0).permutation(n_seq)
    warmup = 0.03
    log = []
    t0, seen, step = time.time(), 0, 0
    model.train()
    while True:
        progress = max(seen / target_tokens, (time.time() - t0) / budget_s)
        if progress >= 1.0:
            break
        scale = progress / warmup if progress < warmup else \
            0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (progress - warmup) / (1 - warmup)))
        for g in opt.param_groups:
            g["lr"] = lr * scale
        idx = order[(step * batch + np.arange(batch)) % n_seq]
        x = torch.from_numpy(np.stack([data[i * ctx:(i + 1) * ctx] for i in idx]).astype(np.int64))
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        seen += x.numel()
        step += 1
        if step % 25 == 0:
            el = time.time() - t0
            log.append({"step": step, "tokens": seen, "seconds": round(el, 1),
                        "loss": round(loss.item(), 4), "lr": lr * scale})
            print(f"step {step} tokens {seen:,} loss {loss.item():.3f} {seen / el:,.0f} tok/s "
                  f"progress {progress:.3f}", flush=True)
        if step % 500 == 0:
            (WORK / "train_log.json").write_text(json.dumps(log))
    wall = time.time() - t0
    model.eval()
    val_loss = evaluate(model, val, ctx)
    model = model.half()
    model.save_pretrained(MODEL_DIR, safe_serialization=True)
    meta = {"parameters": n_params, "tokens_trained": seen, "steps": step, "batch": batch,
            "context": ctx, "lr": lr, "wall_seconds": round(wall, 1), "target_tokens": target_tokens,
            "budget_seconds": budget_s, "val_loss_fp32": val_loss, "train_tokens_available": int(len(data)),
            "val_tokens": int(len(val)), "torch": torch.__version__, "log": log}
    (WORK / "train_meta.json").write_text(json.dumps(meta, indent=1))
    print(f"done: {seen:,} tokens in {wall / 60:.1f} min, val loss {val_loss:.4f}")


def evaluate(model, val, ctx: int) -> float:
    import numpy as np
    import torch

    n = (len(val) - 1) // ctx
    losses = []
    with torch.no_grad():
        for i in range(0, n, 16):
            x = torch.from_numpy(np.stack([val[j * ctx:(j + 1) * ctx]
                                           for j in range(i, min(n, i + 16))]).astype(np.int64))
            losses.append(model(input_ids=x, labels=x).loss.item() * len(x))
    return sum(losses) / n


# ----------------------------------------------------------------------------- card
# One prompt in the register of each large source, and one (the last) outside all of them.
PROMPTS = ["The Python interpreter", "And it came to pass", "A hacker is a person who",
           "The kernel uses", "The city of London is"]


def _shipped(sizes: dict[str, int]) -> str:
    """The model card's words for how much of the explain and heldout splits the scan corpus
    ships (``SCAN_DOCS``), given the split ``sizes`` in documents."""
    n = {k: sizes[k] if SCAN_DOCS[k] is None else min(SCAN_DOCS[k], sizes[k]) for k in ("explain", "heldout")}
    if n == {k: sizes[k] for k in n}:
        return "both are shipped whole as the scan corpus."
    return f"of the last two, {n['explain']:,} and {n['heldout']:,} are shipped as the scan corpus."


def card() -> None:
    import matplotlib
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    meta = json.loads((WORK / "train_meta.json").read_text())
    stats = json.loads((WORK / "extract_stats.json").read_text())
    tok = AutoTokenizer.from_pretrained(MODEL_DIR)
    model = AutoModelForCausalLM.from_pretrained(MODEL_DIR, dtype=torch.float32).eval()
    train_ids = _encode_split("train")
    counts = np.bincount(train_ids, minlength=len(tok)).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    unigram_entropy = float(-(p * np.log(p)).sum())
    val_loss = evaluate(model, _encode_split("val"), meta["context"])  # as shipped (fp16 weights)
    log = meta["log"]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([r["tokens"] / 1e6 for r in log], [r["loss"] for r in log], lw=1, label="train loss (batch)")
    ax.axhline(val_loss, color="C1", ls="--", label=f"held-out loss {val_loss:.3f}")
    ax.axhline(unigram_entropy, color="C2", ls=":", label=f"unigram entropy {unigram_entropy:.3f}")
    ax.set_xlabel("tokens trained (millions)")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title("Embedded GPT-2 (4L, d256): training loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(MODEL_DIR / "loss_curve.png", dpi=110)
    conts = []
    for prompt in PROMPTS:
        ids = tok(tok.bos_token + prompt, return_tensors="pt")["input_ids"]
        out = model.generate(ids, max_new_tokens=30, do_sample=False, pad_token_id=tok.eos_token_id)
        conts.append((prompt, tok.decode(out[0, ids.shape[1]:])))
    size = (MODEL_DIR / "model.safetensors").stat().st_size
    results = {"val_loss": val_loss, "val_perplexity": math.exp(val_loss),
               "unigram_entropy": unigram_entropy, "parameters": meta["parameters"],
               "tokens_trained": meta["tokens_trained"], "wall_seconds": meta["wall_seconds"],
               "weights_bytes": size, "continuations": conts}
    (MODEL_DIR / "training_results.json").write_text(json.dumps(results, indent=1))
    src_rows = "\n".join(f"| {k} | {SOURCES[k]} | {v['documents']:,} | {v['chars'] / 1e6:.1f} MB |"
                         for k, v in stats.items() if k in SOURCES)
    cont_rows = "\n".join(f"- **{p}** → {c!r}" for p, c in conts)
    sp = stats["splits"]
    text = f"""# Embedded model: `lookups-gpt2-4l-d256`

A small GPT-2-architecture language model that context-lookups trains itself, so that the
explorer runs where no weights can be downloaded. It is a standard Hugging Face
`GPT2LMHeadModel` directory and is loaded by `precompute.model.loading.load_model` exactly like `gpt2`.
Reproduce it with `python scripts/build_embedded.py all` (see that script's docstring).

## Data
Real English text that may be redistributed, split into paragraph-aligned documents of at
most {CHUNK_CHARS} characters; each document goes, by a hash of its text, to training (69%; linux-doc 99%),
validation (1%), or the scan corpus's `explain` (20%) and `heldout` (10%) splits.

| source | licence and attribution | documents | text |
|---|---|---|---|
{src_rows}

Splits: train {sp['train']:,} documents, val {sp['val']:,}, explain {sp['explain']:,},
heldout {sp['heldout']:,} (linux-doc documents are never placed in the shipped splits);
{_shipped(sp)}
The scan corpus (`../corpus/*.jsonl.gz`) holds only the redistributable sources above.

## Tokenizer
Byte-level BPE (`tokenizers`), vocabulary 8,192, trained on the training split;
`<|endoftext|>` (id 0) is BOS, EOS and the document separator, as in GPT-2.

## Architecture
GPT-2: 4 layers, d_model 256, 8 heads (d_head 32), d_mlp 1024, `gelu_new`, pre-LayerNorm,
context 256, learned positions, tied embedding/unembedding; {meta['parameters']:,} parameters.
Weights stored as fp16 safetensors ({size / 1e6:.1f} MB).

## Training
AdamW (β = 0.9, 0.95; weight decay 0.1 on matrices), peak learning rate {meta['lr']},
3% warm-up then cosine to 10%, gradient clipping 1.0, batch {meta['batch']} × {meta['context']}
tokens, no dropout. The schedule follows `max(tokens / {meta['target_tokens']:,},
seconds / {meta['budget_seconds']:.0f})` so that training ends within its wall-clock budget.
Trained {meta['tokens_trained']:,} tokens ({meta['steps']:,} steps) in
{meta['wall_seconds'] / 60:.1f} minutes on 2 CPU cores (torch {meta['torch']}).

![loss curve](loss_curve.png)

## Evaluation
On the validation split ({meta['val_tokens']:,} tokens, never trained on), with the fp16
weights as shipped:

- held-out loss **{val_loss:.3f} nats/token**, perplexity **{math.exp(val_loss):.1f}**;
- unigram entropy of the training tokens: {unigram_entropy:.3f} nats/token (a model that
  knew only token frequencies), so the model is {unigram_entropy - val_loss:.2f} nats/token better.

Greedy continuations (30 tokens). The prompts were picked after trying eight: the first four
are in the register of a training source, the last is outside all of them and shows the
typical failure.

{cont_rows}

Greedy decoding of a model this small falls into loops, and outside the registers of its
training text it falls back on its most frequent phrases (the Bible's "the LORD").

## Intended use
A test bed for the interpretability method of Neo, Cohen & Barez (2024), not a model to
generate text with. Small and trained on little data: expect repetition and odd facts.
"""
    (MODEL_DIR / "MODEL_CARD.md").write_text(text)
    print(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("step", choices=["extract", "tokenizer", "train", "card", "all"])
    ap.add_argument("--target-tokens", type=int, default=14_000_000)
    ap.add_argument("--budget-minutes", type=float, default=80.0)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    a = ap.parse_args()
    if a.step in ("extract", "all"):
        extract()
    if a.step in ("tokenizer", "all"):
        tokenizer()
    if a.step in ("train", "all"):
        train(a.target_tokens, a.budget_minutes * 60, a.batch, a.lr)
    if a.step in ("card", "all"):
        card()


if __name__ == "__main__":
    main()
