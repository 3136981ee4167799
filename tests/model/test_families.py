"""The method on each model family with a fast backend (docs/method.md §1, §3, §6, §10): which
backend each architecture gets; gated-MLP attribution on the gate's pre-activation through
RMSNorm, checked against the bridge's hooks and processed weights; grouped-query ablation of a
query head's ``z``, checked against the paper's "value vectors set to zero" where the two can
be compared; RMSNorm weight processing and congruence with an untied unembedding; the q, k, v
helper a per-source-token decomposition reads; and ``lookups precompute`` + ``lookups serve``
with a live pass, end to end, on each family. (The fast = bridge equalities of every quantity
are in ``tests/model/test_backend_equality.py``, parametrized over the families.)"""

from __future__ import annotations

import re
import sqlite3

import httpx
import pytest
import torch

from context_lookups.precompute.model import tokenize_batch

TEXTS = ["The quick brown fox jumps over the lazy dog, and then it ran away into the woods.",
         "In the beginning God created the heaven and the earth.",
         "Unix was developed at Bell Labs in the late 1960s by Ken Thompson and others"]
NAMES = {"neox": "fast (gpt-neox)", "llama": "fast (llama)", "qwen2": "fast (qwen2)",
         "mistral": "fast (mistral)"}
GQA = ("llama", "qwen2", "mistral")  # 2, 2 and 1 kv heads for 4 query heads


def rel(got, ref) -> float:
    """Largest absolute difference relative to the largest magnitude of ``ref``."""
    got = torch.as_tensor(got).detach().to(torch.float64)
    ref = torch.as_tensor(ref).detach().to(torch.float64)
    return float((got - ref).abs().max() / max(float(ref.abs().max()), 1e-6))


def test_each_family_runs_on_its_fast_backend_and_says_so(families, family):
    m = families.fast(family)
    d = m.dims
    assert m.backend.name == NAMES[family]
    assert (d.n_layers, d.d_model, d.n_heads, d.d_mlp, d.d_vocab) == (3, 64, 4, 256, 8192)
    if family == "neox":
        assert d.parallel_attn_mlp and d.normalization == "LN" and not d.gated_mlp and d.n_kv_heads == 4
        assert [d.upstream_attn_layers(k) for k in range(3)] == [0, 1, 2]
    else:
        assert not d.parallel_attn_mlp and d.normalization == "RMS" and d.gated_mlp
        assert d.n_kv_heads == (1 if family == "mistral" else 2)
        assert [d.upstream_attn_layers(k) for k in range(3)] == [1, 2, 3]
    assert d.positional == "rotary"


def test_other_architectures_the_bridge_supports_stay_on_the_bridge(tmp_path, tiny_qwen3_dir,
                                                                   small_corpus_dir, caplog):
    """Qwen3 (a Llama-like block with q/k norms, no fast backend) runs the method on the
    bridge: a gated, RMSNorm, grouped-query model without attention biases."""
    import logging

    from context_lookups.precompute.cli import main as cli_main
    from context_lookups.precompute.heads.attribution import attribute
    from context_lookups.precompute.model import load_model
    from tests.cli_helpers import precompute_args

    m = load_model(str(tiny_qwen3_dir))
    assert m.backend.name == "bridge" and m.dims.gated_mlp and m.dims.n_kv_heads == 2
    att = attribute(m, tokenize_batch(m, TEXTS, 30), 1, 5, ablate=[(0, 1)])
    torch.testing.assert_close(att.ln_total(), att.pre, rtol=1e-4, atol=1e-5)
    with caplog.at_level(logging.INFO):
        assert cli_main(precompute_args(tmp_path / "q3.db", tiny_qwen3_dir, small_corpus_dir)
                        + ["--explainer", "none", "--n-docs", "24"]) == 0
    assert "backend: bridge" in caplog.text


SIZE = {"vocab_size": 8192, "hidden_size": 64, "intermediate_size": 256, "max_position_embeddings": 128,
        "bos_token_id": 0, "eos_token_id": 0}
REFUSED = {  # a block §3 cannot be read off: (config, what the one line says)
    "Gemma2": (lambda T: T.Gemma2Config(**SIZE, num_hidden_layers=2, num_attention_heads=4,
                                        num_key_value_heads=2, head_dim=16, pad_token_id=0),
               "through a norm"),
    "Phi": (lambda T: T.PhiConfig(**SIZE, num_hidden_layers=2, num_attention_heads=4, pad_token_id=0),
            "no norm of their own"),
    "GPTNeo": (lambda T: T.GPTNeoConfig(**SIZE, num_layers=2, num_heads=4,
                                        attention_types=[[["global", "local"], 1]]), "no per-head output"),
}


@pytest.mark.parametrize("arch", REFUSED)
def test_blocks_the_method_cannot_read_are_refused_with_one_line(tmp_path, small_corpus_dir, capsys, arch):
    """Architectures TransformerLens' bridge loads but whose blocks do not fit head attribution
    (post-sublayer norms, a norm shared by parallel attention and MLP, no ``hook_result``) are
    refused at load time: one ``error:`` line, exit 2, nothing written — not a traceback or a
    silently wrong LN-aware score."""
    import transformers as T

    from context_lookups.precompute.cli import main as cli_main
    from context_lookups.precompute.core.settings import EMBEDDED_MODEL
    from tests.cli_helpers import precompute_args

    make, says = REFUSED[arch]
    d = tmp_path / arch.lower()
    T.AutoModelForCausalLM.from_config(make(T)).save_pretrained(d)
    T.AutoTokenizer.from_pretrained(EMBEDDED_MODEL).save_pretrained(d)
    db = tmp_path / "x.db"
    capsys.readouterr()
    assert cli_main(precompute_args(db, d, small_corpus_dir) + ["--explainer", "none"]) == 2
    err = [x for x in capsys.readouterr().err.strip().splitlines()
           if not x.startswith("Loading weights")]  # the bridge loaded the weights (transformers' bar)
    assert len(err) == 1 and err[0].startswith("error: ") and "neither backend" in err[0], err
    assert f"{arch}ForCausalLM" in err[0] and says in err[0] and not db.exists()


@pytest.mark.parametrize("family", GQA)
def test_gated_attribution_projects_on_the_gate_and_adds_up_through_rmsnorm(families, family):
    """§3 on a gated MLP, from the bridge's own hooks and processed weights: ``hook_pre`` is the
    gate's pre-activation ``ln2(x) @ W_gate``, ``hook_post = silu(hook_pre) * (ln2(x) @ W_in)``;
    the raw score is ``hook_result · W_gate[:, i]`` and, RMSNorm not centring, the LN-aware
    score is the raw one over the RMS scale; the LN-aware contributions add up to ``hook_pre``."""
    fast, ref = families.fast(family), families.bridge(family)
    br = ref.backend.bridge
    rows = tokenize_batch(fast, TEXTS, 40)
    layer, neuron = 2, 17
    res = fast.backend.neuron_pass(rows, [(layer, neuron)] * len(rows))
    for j, row in enumerate(rows):
        p = len(row) - 1
        with torch.no_grad():
            _, cache = br.run_with_cache(torch.tensor([row]))
        x = cache[f"blocks.{layer}.ln2.hook_normalized"][0, p]
        mlp = br.blocks[layer].mlp
        gate, up = x @ mlp.W_gate[:, neuron], x @ mlp.W_in[:, neuron]
        assert rel(cache[f"blocks.{layer}.mlp.hook_pre"][0, p, neuron], gate) < 1e-5  # the bridge's hook_pre
        assert rel(res.pre[j], gate) < 1e-5
        assert rel(res.act[j], torch.nn.functional.silu(gate) * up) < 1e-5
        assert rel(res.act[j], cache[f"blocks.{layer}.mlp.hook_post"][0, p, neuron]) < 1e-5
        result = torch.stack([cache[f"blocks.{k}.attn.hook_result"][0, p] for k in range(layer + 1)])
        raw = result @ mlp.W_gate[:, neuron]  # [layer + 1, n_heads]
        assert rel(res.raw[j], raw) < 1e-5
        scale = cache[f"blocks.{layer}.ln2.hook_scale"][0, p, 0]
        assert rel(res.ln[j], raw / scale) < 1e-5  # no centring under RMSNorm
        total = float(res.ln[j].sum()) + sum(res.other[j].values())
        assert total == pytest.approx(float(res.pre[j]), rel=1e-5, abs=1e-6)
        assert set(res.other[j]) == {"embed", "b_O", "mlp0", "mlp1", "b_in"}  # no pos_embed: rotary
        # the up projection is not what is attributed: its contributions add up to another number
        up_total = float((result @ mlp.W_in[:, neuron].detach()).sum() / scale)
        assert up_total != pytest.approx(float(raw.detach().sum() / scale), rel=1e-3)


@pytest.mark.parametrize("family", GQA)
def test_grouped_query_ablation_is_the_query_heads_z(families, family):
    """§6 with shared kv heads: ablating query head ``h`` sets its own ``z`` to zero (its mean);
    ablating every query head that reads kv head ``g`` is the paper's ``hook_v[:, :, g] = 0``
    (the bridge's value vectors, replaced by hand here); ablating one of them is not."""
    fast, ref = families.fast(family), families.bridge(family)
    br, d = ref.backend.bridge, fast.dims
    group = d.n_heads // d.n_kv_heads
    rows = tokenize_batch(fast, TEXTS, 40)
    targets = [(2, 5, 42)] * len(rows)
    clean = fast.backend.clean_view(rows, targets)
    shared = [(1, h) for h in range(group)]  # every query head of kv head 0 in layer 1
    mean_v = {1: (ref.backend.value_sums(rows, [1])[1] / sum(map(len, rows))).float()}
    for method in ("zero", "mean"):
        got = fast.backend.ablated_view(rows, targets, shared, method=method, mean_v=mean_v)
        fill = torch.zeros(d.d_head) if method == "zero" else mean_v[1][0]

        def v_hook(v, hook=None, fill=fill):
            v = v.clone()
            v[:, :, 0] = fill
            return v
        assert torch.equal(mean_v[1][0], mean_v[1][group - 1])  # the query heads read one kv head
        for j, row in enumerate(rows):
            with torch.no_grad(), br.hooks(fwd_hooks=[("blocks.1.attn.hook_v", v_hook)]):
                logits, cache = br.run_with_cache(torch.tensor([row]),
                                                  names_filter=["blocks.2.mlp.hook_post"])
            p = len(row) - 1
            assert rel(got.acts[j], cache["blocks.2.mlp.hook_post"][0, :, 5]) < 1e-5  # every position
            assert rel(got.prob[j], logits[0, p].double().softmax(-1)[42]) < 1e-5
        assert rel(got.prob, clean.prob) > 1e-4  # the ablation changed something
    one = fast.backend.ablated_view(rows, targets, shared[:1])
    both = fast.backend.ablated_view(rows, targets, shared)
    if group > 1:
        assert rel(one.prob, both.prob) > 1e-4  # the other query heads still read the shared v
    # ablating query head 0 leaves the other heads' z (and so their results) as they were
    names = ["blocks.1.attn.hook_z"]
    with torch.no_grad():
        _, c0 = br.run_with_cache(torch.tensor([rows[0]]), names_filter=names)
        with br.hooks(fwd_hooks=ref.backend.ablation_hooks([[(1, 0)]], "zero", None)):
            _, c1 = br.run_with_cache(torch.tensor([rows[0]]), names_filter=names)
    z0, z1 = c0[names[0]][0], c1[names[0]][0]
    assert not z1[:, 0].any() and torch.equal(z1[:, 1:], z0[:, 1:])


def test_rmsnorm_processing_centres_nothing_and_congruence_reads_the_untied_unembedding(families):
    """§1 for RMSNorm models (Qwen2, untied): TransformerLens folds the final norm's weight into
    ``W_U`` and centres ``W_U`` over the vocabulary, and leaves ``W_out`` as it is (no
    center_writing_weights: an RMSNorm does not remove the mean); a LayerNorm model's (GPT-NeoX)
    ``W_out`` is centred over ``d_model``."""
    from context_lookups.precompute.neurons.congruence import layer_congruences

    m = families.fast("qwen2")
    hf = m.backend.hf
    assert hf.lm_head.weight.data_ptr() != hf.model.embed_tokens.weight.data_ptr()  # untied
    W_U = hf.model.norm.weight.detach()[:, None] * hf.lm_head.weight.detach().T
    W_U = W_U - W_U.mean(-1, keepdim=True)
    assert rel(m.backend.W_U(), W_U) < 1e-6
    W_out = m.backend.W_out(2)
    assert torch.equal(W_out, hf.model.layers[2].mlp.down_proj.weight.detach().T.float())
    assert W_out.mean(-1).abs().max() > 1e-3  # not centred
    infos = layer_congruences(W_out, m.backend.W_U(), 2)
    s = W_out @ W_U  # congruence: raw dot products with the processed, untied unembedding
    assert [(i.token_id, i.congruence) for i in infos[:3]] == [
        (int(s[i].argmax()), pytest.approx(float(s[i].max()), rel=1e-5)) for i in range(3)]
    assert families.fast("neox").backend.W_out(1).mean(-1).abs().max() < 1e-5  # LayerNorm: centred


@pytest.mark.parametrize("family", ["neox", "llama", "mistral"])
def test_qkv_helper_gives_the_pattern_and_values_the_attention_used(families, family):
    """``FastBackend.qkv_hook`` (what a per-source-token decomposition reads): the causal
    softmax of ``q k^T / sqrt(d_head)`` times the values, each query head reading its kv head,
    is the ``z`` the model's attention produced; the pattern is the bridge's ``hook_pattern``."""
    from context_lookups.precompute.model import pad

    m, ref = families.fast(family), families.bridge(family)
    be, d = m.backend, m.dims
    rows = tokenize_batch(m, TEXTS, 40)
    tokens, _ = pad(rows, be.pad_id)
    layer, got = 1, {}
    hooks = [be.qkv_hook(layer, lambda q, k, v: got.update(q=q, k=k, v=v)),
             (be.blocks[layer].attn_o, True, lambda mod, args: got.update(z=args[0]))]
    be.capture(tokens, hooks, stop=be.blocks[layer].mlp_out)
    q, k, v = got["q"], got["k"], got["v"]
    assert q.shape[2] == d.n_heads and k.shape[2] == v.shape[2] == d.n_kv_heads
    group = d.n_heads // d.n_kv_heads
    k, v = k.repeat_interleave(group, 2), v.repeat_interleave(group, 2)
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / d.d_head ** 0.5
    n = tokens.shape[1]
    scores = scores.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
    pattern = scores.softmax(-1)
    z = torch.einsum("bhqk,bkhd->bqhd", pattern, v).flatten(-2)
    assert rel(z, got["z"]) < 1e-5
    with torch.no_grad():
        _, cache = ref.backend.bridge.run_with_cache(torch.tensor([rows[1]]),
                                                     names_filter=[f"blocks.{layer}.attn.hook_pattern"])
    L = len(rows[1])
    assert rel(pattern[1, :, :L, :L], cache[f"blocks.{layer}.attn.hook_pattern"][0]) < 1e-5


def _live_act(html: str) -> float:
    m = re.search(r'id="live-act">([^<]+)<', html)
    assert m, html[:500]
    return float(m.group(1).replace("−", "-"))


def test_precompute_and_serve_with_a_live_pass_on_each_family(tmp_path, families, family, small_corpus_dir,
                                                              caplog):
    """``lookups precompute`` (zero ablation included) then ``lookups serve`` on a loopback
    server loading the run's model: the neuron page's live fragment answers 200 with the
    neuron's activation, and the live JSON equals the bridge backend's attribution."""
    import logging

    from context_lookups.app.main import create_app
    from context_lookups.precompute.cli import main as cli_main
    from context_lookups.precompute.heads.attribution import attribute
    from context_lookups.precompute.neurons.congruence import layer_congruences
    from tests.cli_helpers import precompute_args
    from tests.web_fixtures import Server, wait_ready

    db, model_dir, ref = tmp_path / f"{family}.db", families.dir(family), families.bridge(family)
    with caplog.at_level(logging.INFO):
        assert cli_main(precompute_args(db, model_dir, small_corpus_dir) + ["--explainer", "none"]) == 0
    assert f"backend: {NAMES[family]}" in caplog.text
    con = sqlite3.connect(db)
    slug, = con.execute("SELECT slug FROM runs").fetchone()
    (layer, neuron, token_id, congruence), = con.execute(
        "SELECT layer, neuron, token_id, congruence FROM neurons WHERE kind = 'next_token' "
        "ORDER BY layer DESC, congruence DESC LIMIT 1").fetchall()
    n_prompts, n_abl = (con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                        for t in ("prompts", "ablations"))
    con.close()
    assert n_prompts > 0 and n_abl > 0
    info = layer_congruences(ref.backend.W_out(layer), ref.backend.W_U(), layer)[neuron]
    assert (info.token_id, info.congruence) == (token_id, pytest.approx(congruence, rel=1e-5))

    prompt = "The history of the city goes back to the Roman period, when the king"
    row = [ref.bos_token_id] + ref.encode(prompt)
    att = attribute(ref, [row], layer, neuron)
    app = create_app(db_url=f"sqlite:///{db}", torch_threads=None)
    with Server(app) as srv:
        assert wait_ready(srv.url)["ready"]
        base = f"{srv.url}/{slug}/neurons/{layer}/{neuron}"
        r = httpx.get(base + "/live", params={"prompt": prompt}, headers={"HX-Request": "true"}, timeout=120)
        assert r.status_code == 200, r.text[:500]
        assert _live_act(r.text) == pytest.approx(float(att.act[0]), rel=1e-2, abs=1e-3)  # as shown, rounded
        live = httpx.get(base + ".json", params={"prompt": prompt, "ablate": "L0H1"},
                         timeout=120).json()["live"]
    assert live["acts"] == pytest.approx(att.acts[0][1:], rel=1e-4, abs=1e-5)
    assert torch.allclose(torch.tensor(live["attr_raw"]), att.raw[0], rtol=1e-4, atol=1e-5)
    assert torch.allclose(torch.tensor(live["attr_ln"]), att.ln[0], rtol=1e-4, atol=1e-5)
    assert live["ablation"]["act_ablated"] is not None
