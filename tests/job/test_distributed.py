"""The precompute sharded on Ray: the exact top-k merge (no Ray needed), a run on a real local
Ray cluster equal row for row to the single-process run (activation histograms included), a
killed worker's task retried, and a Ray address that does not answer refused in one line with
nothing lost."""

from __future__ import annotations

import os
import shutil
import signal
import time

import pytest
import torch

from context_lookups.precompute.cli import main as cli_main
from context_lookups.precompute.job.distributed import ScanShard, merge_scans, scan_shard, shard_ranges
from context_lookups.precompute.prompts.scan import scan
from tests.conftest import small_settings
from tests.db_rows import canonical_rows, first_difference


def _texts(corpus_dir) -> list[str]:
    from context_lookups.precompute.corpus import load_corpus

    return [r["text"] for r in load_corpus(str(corpus_dir))["explain"]]


def test_sharded_scan_merges_to_the_single_scan_ties_included(tiny_model, small_corpus_dir):
    texts = _texts(small_corpus_dir)
    kw = dict(layers=[0, 1], k=8, batch_size=8, context_tokens=24)
    full = scan(tiny_model, texts, **kw)
    v = full.values
    assert int((v[:-1] == v[1:]).sum()) > 0, "the corpus must produce tied activations to test ties"
    for n_shards in (2, 3, 8):
        ranges = shard_ranges(len(texts), kw["batch_size"], n_shards)
        assert ranges[0][0] == 0 and ranges[-1][1] == len(texts)
        assert all(a % kw["batch_size"] == 0 for a, _ in ranges)
        parts = [scan_shard(tiny_model, ScanShard(texts[a:b], a, **kw)) for a, b in ranges]
        merged = merge_scans(parts)
        for name in ("values", "docs", "positions"):
            assert torch.equal(getattr(merged, name), getattr(full, name)), (n_shards, name)
        assert (merged.n_docs, merged.n_tokens) == (full.n_docs, full.n_tokens)


@pytest.mark.parametrize("address, message", [
    ("127.0.0.1:1", "The Ray cluster at 127.0.0.1:1 does not answer"),
    ("not-an-address", "is not a Ray address"),
])
def test_ray_address_that_does_not_answer(tmp_path, precomputed_db, tiny_model_dir, small_corpus_dir,
                                          capsys, address, message):
    db = tmp_path / "copy.db"
    shutil.copy(precomputed_db, db)
    before = canonical_rows(f"sqlite:///{db}")
    s = small_settings(db, tiny_model_dir, small_corpus_dir)
    args = ["precompute", "--db", s.db_url, "--model", s.model, "--dataset", s.dataset,
            "--run-name", "other", "--ray", address]
    t0 = time.time()
    assert cli_main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert time.time() - t0 < 30
    assert canonical_rows(f"sqlite:///{db}") == before


@pytest.fixture(scope="module")
def ray_cluster():
    """A real local Ray cluster of 2 CPUs for this module (start-up takes ~10 s)."""
    ray = pytest.importorskip("ray")
    os.environ.setdefault("RAY_worker_niceness", "0")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=200 * 2**20)
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_ray_run_equals_single_process_run(ray_cluster, tmp_path, precomputed_db, tiny_model_dir,
                                           small_corpus_dir, tiny_model):
    from context_lookups.precompute.job.pipeline import run_precompute

    db = tmp_path / "ray.db"
    settings = small_settings(db, tiny_model_dir, small_corpus_dir, ray="local", ray_workers=2)
    summary = run_precompute(settings, model=tiny_model)
    assert summary["prompts"] > 0 and summary["kept_pairs"] > 0
    ray_rows = canonical_rows(f"sqlite:///{db}")
    assert ray_rows["knockouts"]  # the knockouts of every look-up, computed on the workers: compared too
    assert ray_rows["activation_histograms"]  # the shards' histograms, merged: compared below too
    assert first_difference(ray_rows, canonical_rows(f"sqlite:///{precomputed_db}")) is None


@pytest.mark.slow
def test_killed_worker_task_is_retried(ray_cluster, tiny_model_dir):
    from context_lookups.precompute.job.distributed import RayExecutor

    def pid(model, job):
        return os.getpid()

    def slow(model, job):
        time.sleep(job)
        return job, os.getpid()

    ex = RayExecutor("local", str(tiny_model_dir), n_workers=2)
    try:
        pids = set(ex.map(pid, [None, None]))
        assert len(pids) == 2
        results = ex.map(slow, [2.0, 2.0, 2.0, 2.0])  # submitted at once: one running per worker
        time.sleep(0.5)
        os.kill(min(pids), signal.SIGKILL)  # a worker dies mid-task
        got = list(results)
    finally:
        ex.close()
    assert [j for j, _ in got] == [2.0, 2.0, 2.0, 2.0]
    assert {p for _, p in got} - pids, "the killed worker's task ran on a restarted worker"
