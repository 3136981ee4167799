"""Benchmark of the precompute job (issue 3). Prints figures; not a test.

    python benchmarks/bench_precompute.py [--model DIR_OR_NAME] [--docs 512] [--job]

1. Scan throughput: the streaming scan (hook_post only, stopping after the last needed layer,
   top-k merge included) against a bare full forward pass with logits, same model, same
   batches, in the same process. Target ratio >= 0.95.
2. With ``--job``: the whole default job (``lookups precompute`` on a fresh database, as a
   subprocess): wall time and peak RSS. Targets: <= 5 minutes, <= 2 GB on the embedded default.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from precompute.corpus import load_corpus  # noqa: E402
from precompute.models import load_model  # noqa: E402
from precompute.next_token import default_layers  # noqa: E402
from precompute.scan import pad, scan, tokenize_batch  # noqa: E402
from precompute.settings import EMBEDDED_CORPUS, EMBEDDED_MODEL  # noqa: E402


def bench_scan(model_name: str, n_docs: int, batch_size: int, repeats: int) -> None:
    model = load_model(model_name)
    ctx = model.n_ctx
    docs = [r["text"] for r in load_corpus(EMBEDDED_CORPUS, n_docs=n_docs)["explain"]]
    layers = default_layers(model.n_layers)
    batches = [pad(tokenize_batch(model, docs[i:i + batch_size], ctx), model.bos_token_id)
               for i in range(0, len(docs), batch_size)]
    n_tok = sum(int(lengths.sum()) for _, lengths in batches)
    scan(model, docs[:batch_size], layers=layers, k=20, batch_size=batch_size, context_tokens=ctx)  # warm-up
    full_s, scan_s = [], []
    for _ in range(repeats):  # interleaved, so both see the same machine load
        t0 = time.perf_counter()
        with torch.no_grad():
            for tokens, _ in batches:
                model.bridge(tokens)  # bare forward pass, logits included
        full_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        scan(model, docs, layers=layers, k=20, batch_size=batch_size, context_tokens=ctx)  # tokenizes too
        scan_s.append(time.perf_counter() - t0)
    full, sc = min(full_s), min(scan_s)
    print(f"model {model_name}: {model.n_layers} layers, d_mlp {model.d_mlp}; scanned layers {layers}")
    print(f"{len(docs)} documents, {n_tok:,} tokens, batch {batch_size}, context {ctx}, best of {repeats}")
    print(f"bare full forward (logits): {n_tok / full:10,.0f} tokens/s")
    print(f"scan (hook_post + top-k):   {n_tok / sc:10,.0f} tokens/s")
    print(f"ratio scan / full forward:  {full / sc:10.2f}   (target >= 0.95)")


def bench_job(extra: list[str]) -> None:
    with tempfile.TemporaryDirectory() as d:
        db = f"sqlite:///{d}/bench.db"
        cmd = [sys.executable, "-m", "app.cli", "precompute", "--db", db, *extra]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        rss_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        if proc.returncode != 0:
            print(proc.stderr[-3000:])
            raise SystemExit(f"job failed with exit code {proc.returncode}")
        tail = proc.stdout[proc.stdout.find("{"):]
        print(tail)
        print(f"whole default job: wall {wall:.1f} s ({wall / 60:.2f} min; target <= 5 min)")
        print(f"peak RSS: {rss_kb / 1024:.0f} MB (target <= 2048 MB)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=EMBEDDED_MODEL)
    ap.add_argument("--docs", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--job", action="store_true", help="also time the whole default job")
    ap.add_argument("--skip-scan", action="store_true")
    a, extra = ap.parse_known_args()
    torch.set_num_threads(os.cpu_count() or 2)
    if not a.skip_scan:
        bench_scan(a.model, a.docs, a.batch_size, a.repeats)
    if a.job:
        bench_job(extra)


if __name__ == "__main__":
    main()
