"""Benchmark of the Ray-sharded scan (issue 11). Prints figures; not a test.

    python benchmarks/bench_ray.py [--model DIR_OR_NAME] [--docs 256] [--context 256] [--repeats 3]

The scan's tokens/s (docs/method.md §2, top-k merge included) on one process, on a local Ray
cluster with one worker (all the machine's CPUs) and with two (half each), next to the bare
Hugging Face forward of the same model on the same batches. The rounds are interleaved in one
driver process so that every path sees the same machine load. Goal: Ray overhead <= 10% with
one worker (ratio one-worker / single-process >= 0.90). Ray's start-up and the workers' model
loading are excluded (a real job pays them once).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from context_lookups.precompute.core.settings import EMBEDDED_CORPUS, EMBEDDED_MODEL  # noqa: E402
from context_lookups.precompute.corpus import load_corpus  # noqa: E402
from context_lookups.precompute.job.distributed import LocalExecutor, RayExecutor  # noqa: E402
from context_lookups.precompute.model import pad, tokenize_batch  # noqa: E402
from context_lookups.precompute.model.loading import load_model  # noqa: E402
from context_lookups.precompute.neurons.congruence import default_layers  # noqa: E402


def _ready(model, job):
    return None


def bare_hf(model_name: str):
    """The Hugging Face model without hooks, or None when it cannot load (a hub name offline)."""
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(model_name).eval()
    except Exception as exc:  # the hub client raises many types
        print(f"(no bare HF reference: {type(exc).__name__})")
        return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=EMBEDDED_MODEL)
    ap.add_argument("--docs", type=int, default=256)
    ap.add_argument("--context", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    import ray

    cpus = os.cpu_count() or 2
    torch.set_num_threads(cpus)
    model = load_model(a.model)
    docs = load_corpus(EMBEDDED_CORPUS, n_docs=a.docs)["explain"]
    texts = list(docs["text"])
    layers = default_layers(model.n_layers)
    kw = dict(layers=layers, k=20, batch_size=a.batch_size, context_tokens=a.context)
    batches = [pad(tokenize_batch(model, texts[i:i + a.batch_size], a.context), model.bos_token_id)[0]
               for i in range(0, len(texts), a.batch_size)]
    hf = bare_hf(a.model)
    os.environ.setdefault("RAY_worker_niceness", "0")  # as `--ray local` (distributed.connect_ray)
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    local = LocalExecutor(model)
    local.scan(docs.select(range(a.batch_size)), **kw)  # warm-up
    times: dict[str, list[float]] = {}
    n_tok = 0
    for _ in range(a.repeats):
        if hf is not None:
            t0 = time.perf_counter()
            with torch.no_grad():
                for tokens in batches:
                    hf(tokens)
            times.setdefault("bare HF forward (logits)", []).append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        n_tok = local.scan(docs, **kw).n_tokens
        times.setdefault("scan, one process", []).append(time.perf_counter() - t0)
        for n in (1, 2):
            ex = RayExecutor("local", a.model, n_workers=n)
            list(ex.map(_ready, [None] * n))  # the workers have loaded the model
            t0 = time.perf_counter()
            got = ex.scan(docs, **kw)
            times.setdefault(f"scan, Ray {n} worker{'s' * (n > 1)}", []).append(time.perf_counter() - t0)
            assert got.n_tokens == n_tok
            ex.close()
    ray.shutdown()
    print(f"model {a.model}: {model.n_layers} layers, d_mlp {model.d_mlp}; scanned layers {layers}")
    print(f"{len(texts)} documents, {n_tok:,} tokens, batch {a.batch_size}, context {a.context}, "
          f"{cpus} CPUs, {a.repeats} interleaved rounds (median; best in brackets)")
    single = statistics.median(times["scan, one process"])
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:28s} {n_tok / med:9,.0f} tokens/s  [{n_tok / min(ts):9,.0f}]  "
              f"x{single / med:5.2f} of one process")
    one = statistics.median(times["scan, Ray 1 worker"])
    print(f"Ray overhead with one worker: {100 * (one / single - 1):+.1f}% (goal <= +10%)")


if __name__ == "__main__":
    main()
