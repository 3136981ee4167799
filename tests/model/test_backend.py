"""The model backend protocol (``precompute/model/``): which backend a model gets and what an
unsupported one says, one copy of the weights, batching, devices and dtypes, and the boundary
that keeps every other module off hook names and the bridge."""

from __future__ import annotations

import ast
import sqlite3
from pathlib import Path

import pytest
import torch

from context_lookups.precompute.model import (
    length_batches,
    load_model,
    resolve_device,
    resolve_dtype,
    tokenize_batch,
)
from context_lookups.precompute.prompts.scan import ScanResult, TopK, scan
from tests.conftest import ROOT

TEXTS = ["The quick brown fox jumps over the lazy dog, and then it ran away into the woods.",
         "In the beginning God created the heaven and the earth.",
         "def main():\n    return 0",
         "Unix was developed at Bell Labs in the late 1960s by Ken Thompson and others"]


def _save_tokenizer(path: Path) -> None:
    from transformers import AutoTokenizer

    from context_lookups.precompute.core.settings import EMBEDDED_MODEL

    AutoTokenizer.from_pretrained(EMBEDDED_MODEL).save_pretrained(path)


@pytest.fixture(scope="module")
def tiny_xlnet_dir(tmp_path_factory) -> Path:
    """A random-weight XLNet: an architecture neither backend supports."""
    from transformers import XLNetConfig, XLNetLMHeadModel

    d = tmp_path_factory.mktemp("tiny-xlnet")
    XLNetLMHeadModel(XLNetConfig(vocab_size=8192, d_model=32, n_layer=1, n_head=2,
                                 d_inner=64)).save_pretrained(d)
    _save_tokenizer(d)
    return d


def _job_args(db, model_dir, corpus_dir, *extra):
    from tests.cli_helpers import precompute_args

    return precompute_args(db, model_dir, corpus_dir) + ["--explainer", "none", *extra]


def test_auto_picks_the_fast_backend_of_the_architecture_and_the_bridge_otherwise(tiny_model_dir, families,
                                                                                 tiny_qwen3_dir):
    assert load_model(str(tiny_model_dir)).backend.name == "fast (gpt2)"
    assert load_model(str(tiny_model_dir), backend="fast").backend.name == "fast (gpt2)"
    assert families.fast("neox").backend.name == "fast (gpt-neox)"
    assert load_model(str(tiny_qwen3_dir)).backend.name == "bridge"  # no fast backend: the bridge
    neox = families.bridge("neox")  # --backend bridge runs a family with a fast backend too
    assert neox.backend.name == "bridge"
    assert neox.dims.parallel_attn_mlp and neox.dims.architecture == "GPTNeoXForCausalLM"
    assert neox.dims.upstream_attn_layers(1) == 1  # the same layer's heads are not upstream
    from context_lookups.precompute.heads.attribution import attribute

    rows = tokenize_batch(neox, TEXTS, 30)
    for layer, n_heads_up in ((0, 0), (1, 1)):  # layer 0 of a parallel model: no upstream head
        att = attribute(neox, rows, layer, 5)
        assert att.raw.shape == (len(rows), n_heads_up, neox.n_heads)
        torch.testing.assert_close(att.ln_total(), att.pre, rtol=1e-4, atol=1e-5)


def test_a_neox_model_runs_the_whole_job_on_the_bridge(tmp_path, families, tiny_qwen3_dir, small_corpus_dir,
                                                       capsys, caplog):
    """The issue's reproduction (a GPT-NeoX model crashed in the prompts phase), on the bridge
    (``tests/model/test_families.py`` runs it on its fast backend); and ``--backend fast`` for an
    architecture without one is one line."""
    import logging

    from context_lookups.precompute.cli import main as cli_main

    db = tmp_path / "neox.db"
    with caplog.at_level(logging.INFO):
        assert cli_main(_job_args(db, families.dir("neox"), small_corpus_dir, "--n-docs", "24",
                                  "--backend", "bridge")) == 0
    assert "backend: bridge" in caplog.text
    con = sqlite3.connect(db)
    raw = {(r[0], len(__import__("json").loads(r[1]))) for r in con.execute(
        "SELECT n.layer, p.attr_raw FROM prompts p JOIN neurons n ON n.id = p.neuron_id")}
    con.close()
    assert raw == {(1, 1), (2, 2)}  # layer-l neurons: only the l layers before are upstream (parallel)
    # --backend fast on a model without a fast backend: one line, exit 2, nothing written
    db2 = tmp_path / "qwen3-fast.db"
    capsys.readouterr()
    assert cli_main(_job_args(db2, tiny_qwen3_dir, small_corpus_dir, "--backend", "fast")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "Qwen3ForCausalLM" in err[0]
    assert "--backend auto" in err[0] and not db2.exists()


def test_a_model_neither_backend_supports_is_one_line_and_exit_2(tmp_path, tiny_xlnet_dir, small_corpus_dir,
                                                                 capsys):
    from context_lookups.precompute.cli import main as cli_main
    from context_lookups.precompute.core.errors import ModelNotSupported

    with pytest.raises(ModelNotSupported, match="XLNetLMHeadModel"):
        load_model(str(tiny_xlnet_dir))
    db = tmp_path / "x.db"
    assert cli_main(_job_args(db, tiny_xlnet_dir, small_corpus_dir)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "neither backend" in err[0]
    assert "Traceback" not in err[0] and not db.exists()
    with pytest.raises(Exception, match="Unknown backend"):
        load_model(str(tiny_xlnet_dir), backend="turbo")


def test_the_fast_backend_holds_one_copy_of_the_weights(tiny_model):
    """No second model next to the Hugging Face one: beyond its parameters the backend keeps
    only b_V, b_O and the processed W_in/b_in of the blocks attributed so far."""
    be = tiny_model.backend
    params = {p.data_ptr() for p in be.hf.parameters()}
    n_params = sum(p.numel() for p in be.hf.parameters())
    extra = be.b_V.numel() + be.b_O_proc.numel() + sum(w.numel() + b.numel() for w, b in be._mlp_in.values())
    assert extra <= be.dims.n_layers * (be.dims.d_model * be.dims.d_mlp + be.dims.d_mlp + 2 * be.dims.d_model)
    assert not any(isinstance(v, torch.nn.Module) and v is not be.hf and any(
        p.data_ptr() not in params for p in v.parameters()) for v in vars(be).values())
    assert extra < n_params / 2


def test_batched_pass_keeps_row_order_and_equals_one_pass(tiny_model):
    be = tiny_model.backend
    rows = tokenize_batch(tiny_model, TEXTS, 40) * 3
    targets = [(j % 2, j * 7) for j in range(len(rows))]
    one = be.neuron_pass(rows, targets)
    many = be.batched_pass(rows, targets, max_tokens=60, max_rows=2)
    for j, r in enumerate(many):
        torch.testing.assert_close(r.raw[0], one.raw[j, :one.n_attn[j]], rtol=0, atol=1e-5)
        assert r.acts[0] == pytest.approx(one.acts[j], abs=1e-5)
    with pytest.raises(ValueError, match="3 rows but 2 targets"):
        be.neuron_pass(rows[:3], targets[:2])
    with pytest.raises(ValueError, match="Neuron L9N0 out of range"):
        be.neuron_pass(rows[:1], [(9, 0)])


def test_topk_merge_of_shards_is_exact(tiny_model, small_corpus_dir):
    from context_lookups.precompute.corpus import load_corpus

    docs = [r["text"] for r in load_corpus(str(small_corpus_dir))["explain"]]
    kw = {"layers": [0, 1], "k": 5, "batch_size": 8, "context_tokens": 32}
    whole = scan(tiny_model, docs, **kw)
    a = scan(tiny_model, docs[:23], **kw)
    b = scan(tiny_model, docs[23:], doc_offset=23, **kw)
    for merged in (a.merge(b), b.merge(a)):
        assert isinstance(merged, ScanResult) and merged.n_docs == len(docs)
        assert torch.equal(merged.docs, whole.docs) and torch.equal(merged.positions, whole.positions)
        assert torch.equal(merged.values, whole.values)
    # ties are broken by the lower document index, whatever the order of the merges
    t1, t2 = TopK(2, 1), TopK(2, 1)
    t1.update(torch.tensor([[1.0], [1.0]]), torch.zeros(2, 1, dtype=torch.long), torch.tensor([5, 6]))
    t2.update(torch.tensor([[1.0]]), torch.zeros(1, 1, dtype=torch.long), torch.tensor([2]))
    t2.merge(t1)
    assert t2.docs[:, 0].tolist() == [2, 5]


def test_device_and_dtype_resolution():
    from context_lookups.precompute.core.errors import BadSettings

    assert resolve_device("auto") in ("cuda", "mps", "cpu")
    assert resolve_device("cpu") == "cpu"
    assert resolve_dtype("bfloat16") is torch.bfloat16
    with pytest.raises(BadSettings, match="Unknown dtype"):
        resolve_dtype("float8")
    with pytest.raises(BadSettings, match="Unknown device"):
        resolve_device("tpu-ish")
    if not torch.cuda.is_available():
        with pytest.raises(BadSettings, match="CUDA is not available"):
            resolve_device("cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_pass_equals_cpu(tiny_model_dir, tiny_model):
    gpu = load_model(str(tiny_model_dir), device="cuda")
    rows, targets = tokenize_batch(gpu, TEXTS, 40), [(1, 5, 42)] * 4
    got, ref = gpu.backend.clean_view(rows, targets), tiny_model.backend.clean_view(rows, targets)
    torch.testing.assert_close(got.raw.cpu(), ref.raw, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got.prob.cpu(), ref.prob, rtol=1e-4, atol=1e-9)
    vals, _, _ = gpu.backend.doc_maxima(rows, [0, 1])
    assert vals.device.type == "cuda"


@pytest.mark.slow
def test_bfloat16_job_end_to_end_keeps_the_congruence_ranking(tmp_path, tiny_model_dir, small_corpus_dir,
                                                               precomputed_db):
    """``--dtype bfloat16`` runs the whole job on the CPU; its next-token neurons and their
    congruence ranking agree with float32 (statistics are float32 either way)."""
    from scipy.stats import spearmanr

    from context_lookups.precompute.cli import main as cli_main
    from tests.cli_helpers import precompute_args

    db = tmp_path / "bf16.db"
    args = precompute_args(db, tiny_model_dir, small_corpus_dir) + ["--dtype", "bfloat16", "--device", "cpu",
                                                          "--explainer", "none", "--ablation", "none"]
    assert cli_main(args) == 0

    def ranking(path):
        con = sqlite3.connect(path)
        out = con.execute("SELECT layer, neuron, congruence, kind FROM neurons "
                          "ORDER BY layer, neuron").fetchall()
        n_prompts = con.execute("SELECT count(*) FROM prompts").fetchone()[0]
        con.close()
        return out, n_prompts

    bf, n_bf = ranking(db)
    fp, n_fp = ranking(precomputed_db)
    assert [r[:2] for r in bf] == [r[:2] for r in fp]
    rho = spearmanr([r[2] for r in bf], [r[2] for r in fp]).statistic
    assert rho > 0.99
    top_bf = {r[1] for r in bf if r[3] == "next_token"}
    top_fp = {r[1] for r in fp if r[3] == "next_token"}
    assert len(top_bf & top_fp) >= len(top_fp) - 1
    assert n_bf > 0 and abs(n_bf - n_fp) <= max(2, n_fp // 5)


def test_length_batches_cover_every_row_once_within_the_caps():
    import random

    rng = random.Random(0)
    for _ in range(200):
        lengths = [rng.randint(1, 300) for _ in range(rng.randint(0, 90))]
        max_tokens, max_rows = rng.choice([64, 512, 4096]), rng.choice([1, 3, 16, 64])
        got = length_batches(lengths, max_tokens, max_rows)
        assert sorted(j for b in got for j in b) == list(range(len(lengths)))
        for b in got:
            assert 1 <= len(b) <= max_rows
            assert len(b) == 1 or max(lengths[j] for j in b) * len(b) <= max_tokens
    # a few short rows are not padded to one long row, and equal rows share one pass
    assert length_batches([127] + [10] * 30, 8192, 64) == [[0], list(range(1, 31))]
    assert len(length_batches([50] * 40, 8192, 64)) == 1


# --- the boundary: only precompute/model/ knows hooks and the bridge -------------------------------

HOOK_WORDS = ("hook_post", "hook_pre", "hook_v", "hook_z", "hook_result", "hook_scale", "hook_embed",
              "hook_pattern", "run_with_cache", "run_with_hooks")
APP_ALLOWED = {"Backend", "Dims", "LoadedModel", "NeuronPass", "load_model", "load_tokenizer",
               "resolve_device", "resolve_dtype", "length_batches", "METHODS", "BACKENDS"}


MODEL = "context_lookups.precompute.model"


def violations(rel: Path, tree: ast.AST) -> list[str]:
    """What module ``rel`` (relative to the repository) does that only ``precompute/model/``
    may: import backend modules other than the package (``app/``: names other than the
    protocol's), TransformerLens, hook names, ``.bridge``, ``.hooks``, ``run_with_cache``."""
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(MODEL):
            names = {a.name for a in node.names}
            if node.module != MODEL and not (node.module == f"{MODEL}.loading" and names <= {"model_slug"}):
                bad.append(f"{rel}: imports {node.module} (use {MODEL})")
            if rel.parts[0] == "app" and not names <= APP_ALLOWED:
                bad.append(f"{rel}: imports {sorted(names - APP_ALLOWED)} from the backend package")
        elif isinstance(node, ast.Import) and any(a.name.startswith((MODEL, "transformer_lens"))
                                                  for a in node.names):
            bad.append(f"{rel}: imports a backend module")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("transformer_lens"):
            bad.append(f"{rel}: imports {node.module}")
        elif isinstance(node, ast.Attribute) and node.attr in ("bridge", "hooks", "cfg", *HOOK_WORDS):
            bad.append(f"{rel}:{node.lineno}: .{node.attr}")
        elif isinstance(node, ast.Name) and node.id in HOOK_WORDS:
            bad.append(f"{rel}:{node.lineno}: {node.id}")
        elif (isinstance(node, ast.Constant) and isinstance(node.value, str) and "hook_" in node.value
              and not any(c.isspace() for c in node.value)):  # a hook name, not prose
            bad.append(f"{rel}:{node.lineno}: hook name {node.value!r}")
    return bad


def test_no_module_outside_the_backend_touches_hooks_or_the_bridge():
    bad, n = [], 0
    for d in ("precompute", "app"):
        for path in sorted((ROOT / d).rglob("*.py")):
            rel = path.relative_to(ROOT)
            if rel.parts[:2] == ("precompute", "model"):
                continue
            n += 1
            bad += violations(rel, ast.parse(path.read_text(), str(path)))
    assert n > 40 and not bad, "\n".join(bad)


def test_the_boundary_check_finds_what_it_forbids():
    """The check above is not vacuous: the code this project had before the backend is caught."""
    src = ("from context_lookups.precompute.model.hooks import fast_supported, hook_post\n"
           "def f(model, t):\n"
           "    with model.bridge.hooks(fwd_hooks=[]):\n"
           "        return model.bridge.run_with_cache(t, names_filter=[hook_post(1), "
           "'blocks.0.attn.hook_v'])\n")
    got = violations(Path("app/live/service.py"), ast.parse(src))
    assert any("imports context_lookups.precompute.model.hooks" in g for g in got)
    assert any("['fast_supported', 'hook_post']" in g for g in got)
    assert {g.split(": ")[-1] for g in got} >= {".bridge", ".hooks", ".run_with_cache", "hook_post",
                                                "hook name 'blocks.0.attn.hook_v'"}
