"""Where the precompute's model work runs: in this process, or sharded over a Ray cluster.

The job (``pipeline.run_precompute``) hands its model work to an executor and writes every
result itself, so only the driver ever touches the database and a killed driver resumes from
its committed units of work exactly as a single-process run does.

- :class:`LocalExecutor`: everything in this process, on the driver's model (the default).
- :class:`RayExecutor` (``lookups precompute --ray ADDRESS``): Ray actors, each holding the model
  once (one per GPU where the cluster has GPUs). The scan (docs/method.md §2) is split into
  contiguous document shards whose per-shard top-k are merged exactly; trimming and attribution
  (§2-§3) are split by group of neurons (``neurons_per_pass``), ablation (§6) by pair. A
  worker that dies is restarted and its task retried by Ray (``max_restarts``,
  ``max_task_retries``).

The result is identical, row for row, to the single-process run: shards are aligned to the
scan's batches (so each forward pass sees the same padded batch), per-group and per-pair work is
the same call on the same inputs, and the top-k merge breaks ties like the streaming scan does
(by the lower document index, ``scan.TopK``). Ray is imported only when a Ray executor is made.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import socket
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from context_lookups.precompute.core.errors import ClusterUnavailable
from context_lookups.precompute.prompts.scan import ScanResult, scan

logger = logging.getLogger(__name__)

SHARDS_PER_WORKER = 4  # smaller shards balance load and lose less to a retried task
RAY_RETRIES = 3


class LocalExecutor:
    """Model work in this process, on the driver's model: the single-process job."""

    n_workers = 1

    def __init__(self, model):
        self.model = model

    def scan(self, docs, *, layers: list[int], k: int, batch_size: int, context_tokens: int,
             desc: str = "scan", histograms: bool = True) -> ScanResult:
        """``scan.scan`` streaming over ``docs`` (a sequence of ``{"text": ...}`` rows, e.g. a
        split of ``corpus.load_corpus``), keeping the activation histograms unless told not to."""
        return scan(self.model, (r["text"] for r in docs), layers=layers, k=k, batch_size=batch_size,
                    context_tokens=context_tokens, n_docs=len(docs), desc=desc, histograms=histograms)

    def map(self, fn: Callable, jobs: Iterable) -> Iterator:
        """``fn(model, job)`` for each job, in order, lazily."""
        for job in jobs:
            yield fn(self.model, job)

    def close(self) -> None:
        pass


# --- the scan in shards ------------------------------------------------------------------------

@dataclass
class ScanShard:
    """Documents ``offset .. offset + len(texts) - 1`` of a split, scanned with the job's settings."""

    texts: list[str]
    offset: int
    layers: list[int]
    k: int
    batch_size: int
    context_tokens: int
    histograms: bool = True


def shard_ranges(n_docs: int, batch_size: int, n_shards: int) -> list[tuple[int, int]]:
    """``[start, stop)`` document ranges, each a whole number of scan batches, covering
    ``0..n_docs`` in order: every forward pass then sees the documents, and padding, of the
    single-process scan."""
    n_batches = math.ceil(n_docs / batch_size)
    per = max(1, math.ceil(n_batches / max(1, n_shards))) * batch_size
    return [(a, min(a + per, n_docs)) for a in range(0, n_docs, per)]


def scan_shard(model, job: ScanShard) -> ScanResult:
    """``scan.scan`` of one shard (document indices of the split: ``doc_offset``), with its
    activation histograms (merged exactly by :func:`merge_scans`)."""
    return scan(model, job.texts, layers=job.layers, k=job.k, batch_size=job.batch_size,
                context_tokens=job.context_tokens, n_docs=len(job.texts), desc=f"shard {job.offset}",
                doc_offset=job.offset, histograms=job.histograms)


def merge_scans(parts: Sequence[ScanResult]) -> ScanResult:
    """The exact top-k of the union of shards (:meth:`ScanResult.merge`: ties broken by the
    lower document index, as the streaming scan breaks them) and the sum of their histograms,
    so it equals one scan over all documents, ties included."""
    return functools.reduce(ScanResult.merge, parts)


# --- Ray ---------------------------------------------------------------------------------------

class _Worker:
    """A Ray actor: loads the model once and runs ``fn(model, job)`` for the driver."""

    def __init__(self, model_name: str, device: str, dtype: str, threads: int, backend: str = "auto"):
        from context_lookups.precompute.model import load_model

        torch.set_num_threads(threads)
        self.model = load_model(model_name, device=device, dtype=dtype, backend=backend)

    def call(self, fn: Callable, job):
        with torch.no_grad():
            return fn(self.model, job)


def _import_ray():
    try:
        import ray
        from ray.util import ActorPool
    except ImportError:
        raise ClusterUnavailable("--ray needs Ray: pip install 'context-lookups[ray]'.") from None
    return ray, ActorPool


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail fast on a ``HOST:PORT`` (or ``ray://HOST:PORT``) that does not accept connections
    (``ray.init`` would retry for minutes)."""
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ClusterUnavailable(f"--ray {address!r} is not a Ray address: use local, auto, "
                                 f"HOST:PORT or ray://HOST:PORT.")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as e:
        raise ClusterUnavailable(f"The Ray cluster at {address} does not answer ({e.strerror or e}). "
                                 f"Start it (ray start --head) or give another --ray; nothing was "
                                 f"written.") from None


def _check_speaks_grpc(address: str, timeout: float = 5.0) -> None:
    """Fail fast on a ``HOST:PORT`` that accepts connections but is not a Ray cluster: Ray's
    GCS (``HOST:PORT``) and its client server (``ray://``) speak gRPC, and a gRPC channel (the
    ``grpcio`` of ``ray[client]``) becomes ready within ``timeout`` seconds only on a gRPC
    server (``ray.init`` would retry for minutes on anything else).

    Raises:
        ClusterUnavailable: no gRPC handshake within ``timeout``; or a ``ray://`` address
            without ``grpcio`` (``ray[client]``).
    """
    try:
        import grpc
    except ImportError:
        if address.startswith("ray://"):
            raise ClusterUnavailable(f"--ray {address} needs Ray's client: pip install "
                                     f"'context-lookups[ray]' (it includes ray[client]).") from None
        return  # plain ray without grpcio: cannot check, ray.init decides
    if os.environ.get("RAY_USE_TLS", "0") not in ("", "0"):
        return  # a TLS cluster: an insecure handshake says nothing
    channel = grpc.insecure_channel(address.split("://", 1)[-1].rstrip("/"))
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout)
    except grpc.FutureTimeoutError:
        raise ClusterUnavailable(f"--ray {address} is not a Ray cluster: the port accepts "
                                 f"connections but did not answer as Ray does (gRPC) within "
                                 f"{timeout:g} s. Give the cluster's address (ray status prints it), "
                                 f"or use --ray local; nothing was written.") from None
    finally:
        channel.close()


def connect_ray(address: str):
    """Connect this process to Ray: ``local`` starts a local cluster (or reuses this process's
    Ray), ``auto`` joins the cluster running on this machine, anything else is a Ray address.

    Raises:
        ClusterUnavailable: Ray is not installed, the address does not answer, or it answers
            but is not a Ray cluster (checked within seconds).
    """
    ray, _ = _import_ray()
    if address not in ("local", "auto"):
        _check_reachable(address)
        _check_speaks_grpc(address)
    if ray.is_initialized():
        return ray
    try:
        if address == "local":
            # Ray runs workers at niceness 15 by default; here they do the job's main work and
            # would otherwise lose the CPU to anything else running on the machine.
            os.environ.setdefault("RAY_worker_niceness", "0")
            ray.init(include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, log_to_driver=False)
    except ConnectionError as e:
        raise ClusterUnavailable(f"No Ray cluster at --ray {address} ({str(e).splitlines()[0]}). "
                                 f"Start one with `ray start --head`, or use --ray local; nothing "
                                 f"was written.") from None
    return ray


class RayExecutor:
    """Model work on Ray actors; the driver keeps the database.

    Workers: ``n_workers`` actors (default: one per GPU of the cluster; without GPUs, one per
    node), each reserving an equal share of the cluster's CPUs; CPU workers run with this
    process's torch thread count (the float reductions of the logits depend on it). Every node
    needs context-lookups installed and the model available (the hub or a shared cache or
    directory).

    Raises:
        ClusterUnavailable: see :func:`connect_ray`.
    """

    def __init__(self, address: str, model_name: str, *, n_workers: int | None = None,
                 device: str = "auto", dtype: str = "float32", backend: str = "auto"):
        self.ray = connect_ray(address)
        _, ActorPool = _import_ray()
        res = self.ray.cluster_resources()
        gpus = int(res.get("GPU", 0))
        nodes = sum(1 for n in self.ray.nodes() if n.get("Alive"))
        self.n_workers = n_workers or gpus or max(1, nodes)
        cpus = max(1, int(res.get("CPU", 1)) // self.n_workers)
        opts = dict(num_cpus=1 if gpus else cpus, num_gpus=1 if gpus else 0,
                    max_restarts=RAY_RETRIES, max_task_retries=RAY_RETRIES, scheduling_strategy="SPREAD")
        actor = self.ray.remote(_Worker).options(**opts)
        # CPU workers compute with the driver's torch thread count: float reductions (the logits of
        # the ablation passes) depend on it, and the rows must be those of a single-process run.
        threads = torch.get_num_threads()
        self.actors = [actor.remote(model_name, device if gpus else "cpu", dtype, threads, backend)
                       for _ in range(self.n_workers)]
        self.pool = ActorPool(self.actors)
        logger.info("Ray: %d workers (%s each)", self.n_workers,
                    "1 GPU" if gpus else f"{cpus} CPUs reserved, {threads} torch threads")

    def map(self, fn: Callable, jobs: Iterable) -> Iterator:
        """``fn(model, job)`` for each job on the workers; results in job order."""
        return self.pool.map(lambda a, job: a.call.remote(fn, job), list(jobs))

    def scan(self, docs, *, layers: list[int], k: int, batch_size: int, context_tokens: int,
             desc: str = "scan", histograms: bool = True) -> ScanResult:
        """The scan of ``docs`` (as :meth:`LocalExecutor.scan`) in document shards
        (:func:`shard_ranges`), merged exactly (:func:`merge_scans`): equal to ``scan.scan`` on
        one process."""
        t0 = time.time()
        jobs = [ScanShard([docs[i]["text"] for i in range(a, b)], a, layers, k, batch_size, context_tokens,
                          histograms)
                for a, b in shard_ranges(len(docs), batch_size, self.n_workers * SHARDS_PER_WORKER)]
        parts = list(tqdm(self.map(scan_shard, jobs), total=len(jobs), desc=f"{desc} (Ray shards)",
                          unit="shard", dynamic_ncols=True))
        if not parts:
            raise ValueError("The corpus is empty: nothing to scan.")
        out = merge_scans(parts)
        out.seconds = time.time() - t0
        return out

    def close(self) -> None:
        for a in self.actors:
            self.ray.kill(a)
        self.actors = []


def ray_executor(settings) -> RayExecutor | None:
    """A :class:`RayExecutor` when ``settings.ray`` names a cluster, else None (this process).

    Raises:
        ClusterUnavailable: see :func:`connect_ray`.
    """
    if not settings.ray:
        return None
    return RayExecutor(settings.ray, settings.model, n_workers=settings.ray_workers,
                       device=settings.device, dtype=settings.dtype, backend=settings.backend)
