"""Capacity plan of the precompute (issue 11): the table of docs/scaling.md. Prints figures.

    python benchmarks/capacity.py --db URL_OF_A_FINISHED_RUN --cpu-tokens-per-s 3000

1. Measures the run's storage on its backend (bytes per row of each table, indexes included;
   per token and per head for the prompts' JSON) — this machine's measured storage costs.
2. Projects GPT-2 small, GPT-2 large and Pythia-1.4b on pile-10k with the paper's settings
   (3 analysed layers, 20 + 20 neurons per layer, top-20, 20 held-out prompts per pair):
   tokens to run, FLOPs per token, wall time on 1, 4 and 16 A100s and on this CPU, DB size.

Sources and assumptions (also in docs/scaling.md):
- FLOPs per token of a forward pass: ``2 N + 2 n_layer n_ctx d_model`` with
  ``N = 12 n_layer d_model^2`` non-embedding parameters (Kaplan et al. 2020, *Scaling Laws for
  Neural Language Models*, Table 1); the unembedding ``2 d_model n_vocab`` is added where logits
  are computed (ablation).
- A100: 312 TFLOP/s dense BF16 (NVIDIA A100 Tensor Core GPU datasheet); assumed model FLOPs
  utilisation ``MFU`` (default 0.3) for hooked inference forward passes.
- This CPU: the measured scan tokens/s of the embedded model (``bench_ray.py``) turned into
  FLOP/s with the same formula.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sqlalchemy import Text, cast, func, select, text  # noqa: E402

MODELS = {  # public configurations (Hugging Face config.json of each)
    "GPT-2 small": dict(n_layer=12, d_model=768, n_heads=12, d_mlp=3072, n_ctx=1024, n_vocab=50257,
                        parallel=False),
    "GPT-2 large": dict(n_layer=36, d_model=1280, n_heads=20, d_mlp=5120, n_ctx=1024, n_vocab=50257,
                        parallel=False),
    "Pythia-1.4b": dict(n_layer=24, d_model=2048, n_heads=16, d_mlp=8192, n_ctx=2048, n_vocab=50304,
                        parallel=True),
}
EMBEDDED = dict(n_layer=4, d_model=256, n_ctx=256)
DOCS = 10_000              # pile-10k, both splits (2/3 explain, 1/3 held-out)
DOC_BYTES = 5_000          # assumed mean stored document text (whole document)
LAYERS, NEURONS, TOP_K, HELDOUT = 3, 40, 20, 20   # paper defaults: 20 next-token + 20 random per layer
A100_BF16 = 312e12


def flops_per_token(m: dict, logits: bool = False) -> float:
    n = 12 * m["n_layer"] * m["d_model"] ** 2
    f = 2 * n + 2 * m["n_layer"] * m["n_ctx"] * m["d_model"]
    return f + (2 * m["d_model"] * m["n_vocab"] if logits else 0)


def measure(url: str) -> dict:
    """Bytes per row of each table (indexes included) and the prompts' JSON bytes per token and
    per head, on the run's own backend."""
    from context_lookups.precompute.store.db import connect
    from context_lookups.precompute.store.schema import Base, Neuron, Pair, Phase, Prompt, Run

    engine = connect(url)
    out: dict = {"backend": engine.dialect.name, "tables": {}}
    with engine.connect() as c:
        if engine.dialect.name == "sqlite":
            owner = dict(c.execute(text("SELECT name, tbl_name FROM sqlite_master")).all())
            sizes: dict[str, int] = {}
            for name, size in c.execute(text("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name")):
                sizes[owner.get(name, name)] = sizes.get(owner.get(name, name), 0) + size
        else:
            sizes = {t.name: c.scalar(text(f"SELECT pg_total_relation_size('{t.name}')"))
                     for t in Base.metadata.sorted_tables}
        for t in Base.metadata.sorted_tables:
            n = c.scalar(select(func.count()).select_from(t))
            out["tables"][t.name] = (n, sizes.get(t.name, 0))
        def size(col):  # characters of a JSON or text column, on either backend
            return func.length(cast(col, Text))

        per_tok = [size(Prompt.tokens), size(Prompt.token_ids), size(Prompt.acts), size(Prompt.text)]
        tok_bytes, n_tok, head_bytes = c.execute(select(
            func.sum(sum(per_tok[1:], per_tok[0])), func.sum(Prompt.end - Prompt.start),
            func.sum(size(Prompt.attr_raw) + size(Prompt.attr_ln)))).one()
        # heads in a stored attribution: every upstream head of the neuron's layer
        n_heads_stored = c.scalar(select(func.sum((Neuron.layer + 1) * Run.n_heads))
                                  .select_from(Prompt).join(Neuron).join(Run))
        n_selected = c.scalar(select(func.count()).select_from(Neuron).where(Neuron.kind != "other"))
        kept = c.scalar(select(func.count()).select_from(Pair).where(Pair.kept))
        # the driver's writes: a scan phase's time beyond the scan itself, per top-k row stored
        write_s = sum(ph.seconds - ph.stats["scan_seconds"] for ph in
                      c.execute(select(Phase).where(Phase.name.like("scan:%"))))
    engine.dispose()
    out["write_s_per_row"] = write_s / out["tables"]["top_activations"][0]
    n_prompts, prompt_bytes = out["tables"]["prompts"]
    p = dict(per_token=tok_bytes / n_tok, mean_tokens=n_tok / n_prompts,
             per_head=head_bytes / n_heads_stored, heads=n_heads_stored / n_prompts)
    p["rest"] = prompt_bytes / n_prompts - p["per_token"] * p["mean_tokens"] - p["per_head"] * p["heads"]
    out["prompt"] = p
    out["kept_per_neuron"] = kept / n_selected
    return out


def per_row(meas: dict, table: str) -> float:
    n, size = meas["tables"][table]
    return size / n if n else 0.0


def project(m: dict, meas: dict, kept_per_neuron: float, cpu_flops: float, mfu: float) -> dict:
    ctx = m["n_ctx"]
    layers = list(range(m["n_layer"] - LAYERS, m["n_layer"]))
    scored = sum(k if m["parallel"] else k + 1 for k in layers) / LAYERS  # mean upstream attn layers
    scan_tok = DOCS * ctx                                           # upper bound: every doc >= n_ctx
    trim_tok = LAYERS * NEURONS * 2 * TOP_K * math.ceil(math.log2(ctx)) * ctx / 4
    attr_tok = LAYERS * NEURONS * 2 * TOP_K * 100                   # prompts < max_prompt_tokens
    kept = LAYERS * NEURONS * kept_per_neuron
    abl_tok = kept * HELDOUT * 2 * 100                              # clean + ablated pass
    f, f_logits = flops_per_token(m), flops_per_token(m, logits=True)
    total = (scan_tok + trim_tok + attr_tok) * f + abl_tok * f_logits
    p = meas["prompt"]
    n_neurons = LAYERS * m["d_mlp"]
    n_prompts = LAYERS * NEURONS * 2 * TOP_K
    db = (n_neurons * per_row(meas, "neurons") + n_neurons * TOP_K * 2 * per_row(meas, "top_activations")
          + DOCS * DOC_BYTES
          + n_prompts * (p["rest"] + p["per_token"] * p["mean_tokens"]
                         + p["per_head"] * scored * m["n_heads"])
          + LAYERS * NEURONS * scored * m["n_heads"] * per_row(meas, "pairs")
          + kept * (per_row(meas, "explanations") + HELDOUT * (per_row(meas, "classifications")
                                                            + per_row(meas, "ablations"))))
    writes = n_neurons * TOP_K * 2 * meas["write_s_per_row"]  # on the driver, not parallel
    wall = {g: total / (g * A100_BF16 * mfu) + writes for g in (1, 4, 16)}
    return dict(tokens=scan_tok + trim_tok + attr_tok + abl_tok, scan_tokens=scan_tok, flops_token=f,
                total=total, wall=wall, cpu=total / cpu_flops + writes, db=db, writes=writes)


def fmt_s(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.0f} min" if s < 7200 else f"{s / 3600:.0f} h" \
        if s < 172800 else f"{s / 86400:.0f} days"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", required=True, help="URL of a finished run (the embedded default)")
    ap.add_argument("--cpu-tokens-per-s", type=float, required=True,
                    help="measured scan tokens/s of the embedded model here (bench_ray.py)")
    ap.add_argument("--mfu", type=float, default=0.3)
    a = ap.parse_args()
    meas = measure(a.db)
    print(f"measured on {meas['backend']}: rows, bytes per row (indexes included)")
    for t, (n, size) in meas["tables"].items():
        if n:
            print(f"  {t:16s} {n:8,d} rows {size / n:8.0f} B/row")
    p = meas["prompt"]
    print(f"  prompts: {p['per_token']:.0f} B per token ({p['mean_tokens']:.1f} tokens mean), "
          f"{p['per_head']:.0f} B per scored head, {p['rest']:.0f} B other")
    kept_per_neuron = meas["kept_per_neuron"]
    print(f"  driver writes: {1e6 * meas['write_s_per_row']:.1f} us per top-k row stored")
    cpu_flops = a.cpu_tokens_per_s * flops_per_token(dict(EMBEDDED, n_vocab=0))
    print(f"kept pairs per selected neuron (measured): {kept_per_neuron:.2f}; this CPU: "
          f"{a.cpu_tokens_per_s:,.0f} embedded tokens/s = {cpu_flops / 1e9:.1f} GFLOP/s")
    print("\n| model | tokens to run (scan) | FLOPs/token | total FLOPs | 1 A100 | 4 A100 | 16 A100 | "
          "this CPU | DB size | of which DB writes |\n|---|---|---|---|---|---|---|---|---|---|")
    for name, m in MODELS.items():
        r = project(m, meas, kept_per_neuron, cpu_flops, a.mfu)
        print(f"| {name} | {r['tokens'] / 1e6:.1f} M ({r['scan_tokens'] / 1e6:.1f} M) | "
              f"{r['flops_token'] / 1e9:.2f} G | {r['total']:.2e} | {fmt_s(r['wall'][1])} | "
              f"{fmt_s(r['wall'][4])} | {fmt_s(r['wall'][16])} | {fmt_s(r['cpu'])} | "
              f"{r['db'] / 1e6:.0f} MB | {fmt_s(r['writes'])} |")


if __name__ == "__main__":
    main()
