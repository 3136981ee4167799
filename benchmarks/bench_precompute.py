"""Benchmark of the precompute job and the live pass (issues 13, 19). Prints figures; not a test.

    python benchmarks/bench_precompute.py [--model embedded|gpt2-small-shape|pythia-160m-shape|
        llama-160m-shape|DIR] [--docs 64] [--context 1024] [--trim-neurons 4] [--trim-context 256] [--job]

Every ratio is against the bare Hugging Face forward (``AutoModelForCausalLM``, logits
included, SDPA) of the same model on the same batches, measured in the same process,
interleaved, best of ``--repeats``:

1. Scan: ``precompute.prompts.scan.scan`` (tokenizing, hook_post maxima, top-k) in tokens/s on the
   backend ``load_model`` picks (``--backend auto``: the fast one for GPT-2), without and with
   the activation histograms the job keeps (docs/method.md §2); and its peak RSS alone, in a
   child process.
2. Peak RSS of the whole job, ``lookups precompute`` at ``--context`` tokens (small neuron
   counts, documents of the embedded corpus concatenated to the context), against "weights +
   activations": the bytes of the model's parameters (one copy) plus the peak growth of RSS
   during one bare forward of the base model (no unembedding: the scan needs none; GPT-2's GELU
   fused as the job runs it) on a batch of the scan's shape, both measured in a child process
   that first imports what the job imports and faults the weights in. The ratio is (job peak -
   that runtime) / (weights + activations); goal <= 1.3.
3. Trimming + attribution of ``--trim-neurons`` neurons x top-k documents, as the job runs that
   phase: the former per-neuron code on the bridge backend (bisection with one bridge pass per
   step, ``attribute`` of the prompts kept) against the job's ``compute_prompts``
   (``trim_many`` + ``batched_pass`` across neurons), checking that both keep the same prompts
   and starts; and the searches run to the end without the job's early stop.
4. Live pass: the backend's ``clean_view`` of one ~64-token prompt against the former live
   computation (``attribute`` + ``ablate`` on the bridge backend) and the bare forward.
5. Extrapolation to the paper's setting (pile-10k: ~10k documents x 1,024 tokens, layers 9-11,
   20 + 20 neurons per layer, top 20 of two splits) from the measured rates.

The ``*-shape`` models are random weights in the shapes of real models (no download), saved
with the embedded tokenizer (its ids are < 8192; the vocabulary, and so the unembedding, keeps
the real size); documents are the embedded corpus, concatenated up to ``--context`` tokens:

* ``gpt2-small-shape`` (or ``gpt2-small``): ``GPT2Config()`` — 12 layers, d_model 768, 12
  heads, d_mlp 3072, vocab 50,257, tied unembedding, 124 M parameters;
* ``pythia-160m-shape``: Pythia-160m's ``GPTNeoXConfig`` — 12 layers, d_model 768, 12 heads,
  d_mlp 3072, parallel attention/MLP, rotary on 25% of each head, vocab 50,304, untied, 162 M;
* ``llama-160m-shape``: a Llama of the same size — 12 layers, d_model 768, 12 query heads
  sharing 4 kv heads (grouped-query), SwiGLU d_mlp 3072, RMSNorm, rotary, vocab 32,000 (Llama's),
  untied, 153 M.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch

os.environ.setdefault("TQDM_DISABLE", "1")

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from context_lookups.precompute.core.settings import EMBEDDED_CORPUS, EMBEDDED_MODEL  # noqa: E402
from context_lookups.precompute.corpus import load_corpus  # noqa: E402
from context_lookups.precompute.model import load_model, pad, tokenize_batch  # noqa: E402
from context_lookups.precompute.neurons.congruence import default_layers  # noqa: E402
from context_lookups.precompute.prompts.scan import scan  # noqa: E402


def shape_config(name: str):
    """The ``transformers`` config of a ``*-shape`` model (module docstring), or None."""
    import transformers as T

    name = name.removesuffix("-shape")
    if name == "gpt2-small":
        return T.GPT2Config()
    if name == "pythia-160m":
        return T.GPTNeoXConfig(vocab_size=50304, hidden_size=768, num_hidden_layers=12,
                               num_attention_heads=12, intermediate_size=3072, rotary_pct=0.25,
                               max_position_embeddings=2048, use_parallel_residual=True,
                               tie_word_embeddings=False, bos_token_id=0, eos_token_id=0)
    if name == "llama-160m":
        return T.LlamaConfig(vocab_size=32000, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                             num_key_value_heads=4, intermediate_size=3072, max_position_embeddings=2048,
                             tie_word_embeddings=False, bos_token_id=0, eos_token_id=0)
    return None


def model_dir(name: str, tmp: str) -> str:
    if name == "embedded":
        return EMBEDDED_MODEL
    cfg = shape_config(name)
    if cfg is None:
        return name
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(tmp)
    AutoTokenizer.from_pretrained(EMBEDDED_MODEL).save_pretrained(tmp)
    return tmp


def documents(model, n_docs: int, ctx: int) -> list[str]:
    """``n_docs`` texts of at least ``ctx`` tokens (embedded corpus, concatenated)."""
    out, cur, n = [], [], 0
    for r in load_corpus(EMBEDDED_CORPUS)["explain"]:
        cur.append(r["text"])
        n += len(model.encode(r["text"]))
        if n >= ctx:
            out.append("\n\n".join(cur))
            cur, n = [], 0
            if len(out) == n_docs:
                break
    return out


def bare(path: str):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def timed(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def bench_scan(model, hf, docs, ctx, batch_size, repeats) -> float:
    from context_lookups.precompute.prompts.histogram import Histograms

    layers = default_layers(model.n_layers)
    batches = [pad(tokenize_batch(model, docs[i:i + batch_size], ctx), model.bos_token_id)
               for i in range(0, len(docs), batch_size)]
    n_tok = sum(int(lengths.sum()) for _, lengths in batches)

    def full():
        with torch.no_grad():
            for tokens, _ in batches:
                hf(tokens)

    def sc():
        scan(model, docs, layers=layers, k=20, batch_size=batch_size, context_tokens=ctx)

    def sch():  # the job's scan: with the activation histograms (docs/method.md §2)
        scan(model, docs, layers=layers, k=20, batch_size=batch_size, context_tokens=ctx, histograms=True)

    def sct():  # the same histograms counted by the pure-torch pass (no numba)
        scan(model, docs, layers=layers, k=20, batch_size=batch_size, context_tokens=ctx,
             observe=Histograms(layers, model.d_mlp, use_numba=False))

    # warm-up: first-call costs (and the histogram pass's compilation, cached on disk after)
    scan(model, docs[:2], layers=layers, k=20, batch_size=2, context_tokens=32, histograms=True)
    f, s, h, t = [], [], [], []
    for _ in range(repeats):  # interleaved, so all see the same machine load
        f.append(timed(full, 1))
        s.append(timed(sc, 1))
        h.append(timed(sch, 1))
        t.append(timed(sct, 1))
    full_t, scan_t, hist_t, torch_t = min(f), min(s), min(h), min(t)
    # the histogram pass's own share of a scan (timed inside it: robust to the machine's load)
    # the histogram pass's own share of a scan, timed inside it (robust to the machine's load),
    # for the compiled pass the job runs and for the pure-torch one
    shares, pass_s = {}, {}
    for name, use_numba in (("compiled (numba)", True), ("pure torch", False)):
        hist, spent = Histograms(layers, model.d_mlp, use_numba=use_numba), []

        def timed_obs(layer, post, real, hist=hist, spent=spent):
            t0 = time.perf_counter()
            hist(layer, post, real)
            spent.append(time.perf_counter() - t0)

        shares[name], pass_s[name] = [], []
        for _ in range(repeats):
            spent.clear()
            t0 = time.perf_counter()
            scan(model, docs, layers=layers, k=20, batch_size=batch_size, context_tokens=ctx,
                 observe=timed_obs)
            shares[name].append(sum(spent) / (time.perf_counter() - t0))
            pass_s[name].append(sum(spent))
    print(f"scan: layers {layers}, {len(docs)} docs, {n_tok:,} tokens, batch {batch_size}, context {ctx}")
    print(f"  bare HF forward (logits):  {n_tok / full_t:9,.0f} tok/s")
    print(f"  scan (maxima + top-k):     {n_tok / scan_t:9,.0f} tok/s   ratio {full_t / scan_t:.2f} "
          f"(goal >= 0.95)")
    print(f"  + histograms (the job's):  {n_tok / hist_t:9,.0f} tok/s   ratio {full_t / hist_t:.2f} "
          f"({100 * (hist_t / scan_t - 1):+.1f}% time vs the scan without)")
    print(f"  + histograms, torch pass:  {n_tok / torch_t:9,.0f} tok/s   ratio {full_t / torch_t:.2f} "
          f"({100 * (torch_t / scan_t - 1):+.1f}% time; the pure-torch count_batch, no numba)")
    n_act = n_tok * len(layers) * model.d_mlp
    for name, sh in shares.items():
        best = min(pass_s[name])
        print(f"  histogram pass, {name:16s} timed inside the scan: {100 * min(sh):.1f}% of its "
              f"time (median {100 * statistics.median(sh):.1f}%), {best:.2f} s, "
              f"{1e9 * best / n_act:.1f} ns per activation ({len(layers)} layers x {model.d_mlp})")
    return n_tok / hist_t, n_tok / full_t


def vm_hwm_kb(pid: int | str) -> int:
    """Peak resident set of a process (``VmHWM``, kB), since its last exec. Not
    ``getrusage``'s ``ru_maxrss``: Linux carries that across fork and exec, so a child would
    report this benchmark's own peak (models and logits loaded) as its own."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def scan_rss(path: str, n_docs: int, ctx: int, batch_size: int) -> None:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = (f"import sys; sys.path.insert(0, {root!r});"
            f"import benchmarks.bench_precompute as b;"
            f"from context_lookups.precompute.model import load_model;"
            f"from context_lookups.precompute.prompts.scan import scan;"
            f"from context_lookups.precompute.neurons.congruence import default_layers;"
            f"m = load_model({path!r}); d = b.documents(m, {n_docs}, {ctx});"
            f"scan(m, d, layers=default_layers(m.n_layers), k=20, batch_size={batch_size}, "
            f"context_tokens={ctx}, histograms=True);"
            f"print(b.vm_hwm_kb('self'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    if out.returncode:
        print(out.stderr[-2000:])
        return
    print(f"  scan alone (with histograms), peak RSS: {int(out.stdout.split()[-1]) / 1024 ** 2:.2f} GB "
          f"(goal <= 4 GB at GPT-2 small, 1,024 tokens, batch 16)")


def write_corpus(model, d: str, n_docs: int, ctx: int) -> str:
    """A corpus directory of two splits of ``n_docs`` documents of at least ``ctx`` tokens."""
    import gzip
    import json

    docs = documents(model, 2 * n_docs, ctx)
    os.makedirs(d, exist_ok=True)
    for split, part in (("explain", docs[:n_docs]), ("heldout", docs[n_docs:])):
        with gzip.open(os.path.join(d, f"{split}.jsonl.gz"), "wt") as fh:
            for t in part:
                fh.write(json.dumps({"text": t}) + "\n")
    return d


_BARE_RSS = """
import sys, torch
sys.path.insert(0, {root!r})
import context_lookups.app.cli, context_lookups.precompute.job.pipeline  # the job's runtime
import context_lookups.precompute.model.gpt2, context_lookups.precompute.model.processing
import transformer_lens.weight_processing
from transformers import AutoModelForCausalLM
import benchmarks.bench_precompute as b
def rss(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
runtime = rss("VmRSS:")
hf = AutoModelForCausalLM.from_pretrained({path!r}, dtype=torch.float32, attn_implementation="sdpa").eval()
precompute.model.gpt2.fuse_gelu(hf)  # the model as the job runs it (one fused GELU kernel), without hooks
weights = sum(t.untyped_storage().nbytes() for t in {{p.data_ptr(): p for p in hf.parameters()}}.values())
with torch.no_grad():  # fault the weights in (safetensors may be memory-mapped): not activations
    sum(float(p.sum()) for p in hf.parameters())
loaded = rss("VmRSS:")
open("/proc/self/clear_refs", "w").write("5")  # reset VmHWM: the peak of the forward alone
tokens = torch.randint(0, hf.config.vocab_size, ({batch}, {ctx}))
with torch.no_grad():
    hf.base_model(input_ids=tokens, use_cache=False)
print(runtime, weights, loaded, rss("VmHWM:") - loaded)
"""


def job_rss(model, path: str, n_docs: int, ctx: int, batch_size: int) -> None:
    """Peak RSS of ``lookups precompute`` at ``ctx`` tokens against weights + activations (see
    the module docstring)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = _BARE_RSS.format(root=root, path=path, batch=batch_size, ctx=ctx)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    if out.returncode:
        print(out.stderr[-2000:])
        return
    runtime, weights, loaded, acts = map(int, out.stdout.split()[-4:])
    with tempfile.TemporaryDirectory() as d:
        corpus = write_corpus(model, os.path.join(d, "corpus"), n_docs, ctx)
        extra = ["--model", path, "--dataset", corpus, "--context-tokens", str(ctx), "--n-docs", str(n_docs),
                 "--batch-size", str(batch_size), "--n-per-layer", "2", "--top-k", "4",
                 "--heldout-per-pair", "4", "--pair-min-prompts", "2", "--explainer", "none"]
        t0 = time.perf_counter()
        peak_kb, backend, _ = run_job(os.path.join(d, "job.db"), extra)
    gb = 1024 ** 3
    print(f"whole job, peak RSS ({backend}; {n_docs} documents x 2 splits, {ctx} tokens, batch {batch_size}, "
          f"{time.perf_counter() - t0:.0f} s):")
    print(f"  job peak {peak_kb * 1024 / gb:.2f} GB; runtime (imports) {runtime / gb:.2f} GB, "
          f"weights (one copy) {weights / gb:.2f} GB, activations (bare base-model forward, "
          f"batch {batch_size} x {ctx}) {acts / gb:.2f} GB")
    print(f"  (job peak - runtime) / (weights + activations) = "
          f"{(peak_kb * 1024 - runtime) / (weights + acts):.2f} (goal <= 1.3); "
          f"job peak / bare process peak = {peak_kb * 1024 / (loaded + acts):.2f}")


def run_job(db: str, extra: list[str]) -> tuple[int, str, str]:
    """Run ``lookups precompute`` in a child process; its peak RSS (kB, VmHWM polled while it
    runs), the backend it logged and its output."""
    cmd = [sys.executable, "-m", "context_lookups.app.cli", "precompute", "--db", f"sqlite:///{db}", *extra]
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True)
        rss_kb = 0
        while proc.poll() is None:  # the child's own peak, read while it runs
            with contextlib.suppress(OSError):
                rss_kb = max(rss_kb, vm_hwm_kb(proc.pid))
            time.sleep(0.2)
        err.seek(0)
        out.seek(0)
        log, stdout = err.read(), out.read()
    if proc.returncode != 0:
        print(log[-3000:])
        raise SystemExit(f"job failed with exit code {proc.returncode}")
    backend = next((line.split("backend: ", 1)[1].strip() for line in log.splitlines()
                    if "backend: " in line and "loaded" not in line), "?")
    return rss_kb, f"backend: {backend}", stdout


def bench_trim(model, ref, docs, ctx, n_neurons, k, repeats) -> tuple[float, float]:
    """Seconds per (neuron, split) of trimming + attribution, as the job runs that phase: the
    former per-neuron code on the bridge backend ``ref`` (one pass per bisection step and
    neuron, prompts of max_prompt_tokens or more dropped, ``attribute`` of the rest) against the job's own
    :func:`precompute.heads.step.compute_prompts` (every neuron's searches in one lockstep, one
    layer a pass, batches cut to minimise padding, early stop of prompts that will be dropped,
    ``batched_pass``). Also the searches run to the end (no early stop), as the former code did.
    Returns (former, job) seconds per neuron and split."""
    from context_lookups.precompute.core.settings import Settings
    from context_lookups.precompute.heads.attribution import attribute
    from context_lookups.precompute.heads.step import PromptsJob, compute_prompts
    from context_lookups.precompute.prompts.reads import TopDocument
    from context_lookups.precompute.prompts.scan import TrimTask, trim_many
    from tests.test_backend_equality import reference_trim

    settings = Settings()
    max_len = settings.max_prompt_tokens
    layer = model.n_layers - 1
    res = scan(model, docs, layers=[layer], k=k, batch_size=16, context_tokens=ctx)
    neurons = list(range(0, model.d_mlp, model.d_mlp // n_neurons))[:n_neurons]
    rows = tokenize_batch(model, docs, ctx)
    tasks, tops = [], []
    for n in neurons:
        c = res.column(layer, n)
        mine = []
        for r in range(k):
            d = int(res.docs[r, c])
            if d >= 0 and float(res.values[r, c]) > 0:
                tasks.append(TrimTask(rows[d], int(res.positions[r, c]), layer, n, float(res.values[r, c])))
                mine.append(TopDocument(rank=r, doc_idx=d, act=float(res.values[r, c]),
                                         position=int(res.positions[r, c]), text=docs[d]))
        tops.append({"explain": mine, "heldout": []})
    job = PromptsJob([(layer, n) for n in neurons], tops, ctx, settings)

    def old():
        out = []
        for n in neurons:
            ts = [t for t in tasks if t.neuron == n]
            tr = reference_trim(ref, [t.row for t in ts], [t.max_position for t in ts], layer, n,
                                act_ratio=settings.act_ratio, orig_acts=[t.orig_act for t in ts])
            kept = [(r, t, s) for r, (t, (s, _, _)) in enumerate(zip(ts, tr, strict=True))
                    if t.max_position + 1 - s < max_len]
            prompts = [[model.bos_token_id] + list(t.row[s:t.max_position + 1]) for _, t, s in kept]
            if prompts:
                attribute(ref, prompts, layer, n)
            out += [(n, r, s) for r, _, s in kept]
        return out

    def new():
        outs = compute_prompts(model, job)
        return [(n, p["rank"], p["start"]) for n, (ps, _) in zip(neurons, outs, strict=True) for p in ps]

    def full():
        tr = trim_many(model, tasks, act_ratio=settings.act_ratio)
        prompts = [[model.bos_token_id] + list(t.row[s:t.max_position + 1])
                   for t, (s, _, _) in zip(tasks, tr, strict=True)]
        model.backend.batched_pass(prompts, [(t.layer, t.neuron) for t in tasks])

    same = old() == new()
    o, nw, fl = [], [], []
    for _ in range(repeats):
        o.append(timed(old, 1))
        nw.append(timed(new, 1))
        fl.append(timed(full, 1))
    old_t, new_t, full_t = min(o), min(nw), min(fl)
    n_kept = len(new())
    print(f"trimming + attribution: {len(neurons)} neurons of layer {layer}, {len(tasks)} documents, "
          f"context {ctx}, {n_kept} prompts kept (< {max_len} tokens)")
    print(f"  former per-neuron code, bridge: {old_t:7.2f} s   "
          f"({old_t / len(neurons):.2f} s per neuron and split)")
    print(f"  the job's compute_prompts:     {new_t:8.2f} s   "
          f"({new_t / len(neurons):.2f} s per neuron and split)"
          f"   speed-up {old_t / new_t:.2f}x (goal >= 3x); "
          f"same kept prompts and starts: {'yes' if same else 'NO'}")
    print(f"  every search to the end (no early stop), all {len(tasks)} prompts attributed: {full_t:.2f} s, "
          f"{old_t / full_t:.2f}x the former code")
    return old_t / len(neurons), new_t / len(neurons)


def bench_live(model, ref, hf, repeats: int) -> None:
    from context_lookups.precompute.ablation.ablate import ablate
    from context_lookups.precompute.heads.attribution import attribute

    text = ("The history of the city goes back to the Roman period, when a small fort was built on the "
            "hill above the river. In the middle ages the town grew around the market and the church")
    row = [model.bos_token_id] + model.encode(text)[:64]
    layer, neuron, tok = model.n_layers - 1, 7, 262
    tokens = torch.tensor([row])

    def fwd():
        with torch.no_grad():
            hf(tokens)

    def old():
        attribute(ref, [row], layer, neuron)
        ablate(ref, [row], layer, neuron, tok, [])

    def new():
        model.backend.clean_view([row], [(layer, neuron, tok)])

    def new_abl():
        model.backend.clean_view([row], [(layer, neuron, tok)])
        model.backend.ablated_view([row], [(layer, neuron, tok)], [(0, 1)])

    new()
    t = {k: [] for k in ("bare", "old", "new", "abl")}
    for _ in range(repeats * 5):
        for k, fn in (("bare", fwd), ("old", old), ("new", new), ("abl", new_abl)):
            t[k].append(timed(fn, 1))
    p50 = {k: statistics.median(v) * 1000 for k, v in t.items()}
    print(f"live pass, one {len(row)}-token prompt, 1 client, p50:")
    print(f"  bare HF forward {p50['bare']:.1f} ms; bridge backend (attribute + ablate) {p50['old']:.1f} ms; "
          f"clean_view {p50['new']:.1f} ms (= {p50['new'] / p50['bare']:.2f}x bare); "
          f"with one head ablated {p50['abl']:.1f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="embedded", help="embedded, gpt2-small-shape, pythia-160m-shape, "
                    "llama-160m-shape (random weights, see above) or a directory")
    ap.add_argument("--docs", type=int, default=64)
    ap.add_argument("--context", type=int, default=None, help="tokens per scanned document (default n_ctx)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--trim-neurons", type=int, default=4)
    ap.add_argument("--trim-context", type=int, default=256)
    ap.add_argument("--trim-k", type=int, default=8)
    ap.add_argument("--skip", nargs="*", default=[], choices=["scan", "rss", "job-rss", "trim", "live"])
    ap.add_argument("--job-docs", type=int, default=8, help="documents per split of the job whose peak RSS "
                    "is measured")
    ap.add_argument("--job", action="store_true", help="also time the whole default job")
    a, extra = ap.parse_known_args()
    torch.set_num_threads(os.cpu_count() or 2)
    print(f"torch threads {torch.get_num_threads()}; this machine may be shared: ratios are interleaved")
    with tempfile.TemporaryDirectory() as tmp:
        path = model_dir(a.model, tmp)
        model = load_model(path)
        print(f"{model.name}: backend {model.backend.name}")
        hf = bare(path)
        ctx = a.context or model.n_ctx
        scan_rate = bare_rate = trim_new = None
        if "scan" not in a.skip:
            scan_rate, bare_rate = bench_scan(model, hf, documents(model, a.docs, ctx), ctx, a.batch_size,
                                              a.repeats)
        if "rss" not in a.skip:
            scan_rss(path, min(a.docs, 32), ctx, a.batch_size)
        if "job-rss" not in a.skip:
            job_rss(model, path, a.job_docs, ctx, a.batch_size)
        ref = load_model(path, backend="bridge") if {"trim", "live"} - set(a.skip) else None
        if "trim" not in a.skip:
            tctx = min(a.trim_context, model.n_ctx)
            _, trim_new = bench_trim(model, ref, documents(model, max(a.docs, 32), tctx), tctx,
                                     a.trim_neurons, a.trim_k, a.repeats)
            if scan_rate:
                n_tok = 10_000 * 1024
                per = trim_new * (1024 / tctx) * (20 / a.trim_k)
                print("extrapolation to the paper's setting (pile-10k ~10k docs x 1,024 tokens, 3 layers, "
                      "20 + 20 neurons per layer, top 20, 2 splits), this machine:")
                print(f"  scan {n_tok / scan_rate / 3600:.2f} h + trimming/attribution "
                      f"{120 * 2 * per / 3600:.2f} h (measured at {tctx} tokens, k {a.trim_k}; scaled "
                      f"linearly to 1,024 tokens and k 20); the bare HF forward over the same tokens: "
                      f"{n_tok / bare_rate / 3600:.2f} h")
        if "live" not in a.skip:
            bench_live(model, ref, hf, a.repeats)
    if a.job:
        bench_job(extra)


def bench_job(extra: list[str]) -> None:
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        rss_kb, backend, stdout = run_job(os.path.join(d, "bench.db"), extra)
        wall = time.perf_counter() - t0
        print(stdout[stdout.find("{"):])
        print(f"whole default job ({backend}): wall {wall:.1f} s ({wall / 60:.2f} min); "
              f"peak RSS {rss_kb / 1024:.0f} MB")


if __name__ == "__main__":
    main()
