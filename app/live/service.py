"""Live forward passes for the explorer, the live half's one interface (:class:`Live`): the runs'
models load in the background at server start, one worker thread (:mod:`app.live.engine`) runs
every forward pass, a token cap, single-flight and an LRU cache of recent results.

The interface takes and gives plain values only (a model source, a :class:`~app.live.passes.Target`,
texts, head tuples; Futures of JSON-able dicts), never a database row or session, so that the
model could run in a process of its own behind the same methods: :meth:`Live.preload`,
:meth:`Live.unavailable`, :meth:`Live.status`, :meth:`Live.submit`, :meth:`Live.submit_knockout`,
:meth:`Live.submit_fire`, :meth:`Live.waiting`, :attr:`Live.stats`, :meth:`Live.close`.

The science is precompute's: a live view is the model backend's ``clean_view`` (activations,
raw and LN-aware head attribution, the token's probability and the top-5, in ONE forward pass;
with a head selected, also that pass's per-source decomposition, docs/method.md §3) and, when
heads are ablated, its ``ablated_view``; a source's attention knockout, its ``knockout`` — the
passes the precompute job batches
through, on whichever backend the model was loaded with (:mod:`precompute.model`). Nothing here
re-derives them: :func:`~app.live.passes.live_views` is the one place where the live server does
model work.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch
from cachetools import LRUCache

from context_lookups.precompute.core.errors import BadLiveInput, ModelNotAvailable
from context_lookups.precompute.core.settings import Settings
from context_lookups.precompute.model import LoadedModel, load_model, resolve_device

from ..model_files import LocalModels
from ..settings import WebSettings
from .engine import Engine
from .fire import FireColumns, FireJob, run_fire_batch
from .passes import (
    WARM_TEXT,
    Target,
    check_head,
    check_ids,
    check_source,
    live_knockouts,
    live_views,
    serve_batch,
    token_str,
)

logger = logging.getLogger(__name__)


@dataclass(eq=False)
class LiveJob:
    """One live request for the model thread: ``heads`` ablated, attribution at ``pos`` (0-based,
    BOS excluded; None: the last token), ``head`` the head whose look-up is shown (or None); for
    a knockout (``kind="knockout"``), ``src`` the source of ``head``'s look-up knocked out."""

    key: tuple
    source: str
    prompt: str
    target: Target
    heads: tuple[tuple[int, int], ...]
    pos: int | None
    head: tuple[int, int] | None = None
    future: Future = field(default_factory=Future)
    ids: list[int] = field(default_factory=list)
    kind: str = "neuron"  # the engine batches jobs of one model and kind ("knockout"; app.live.fire: "fire")
    src: int | None = None


class Live:
    """The live engine of one server process (thread-safe)."""

    def __init__(self, settings: WebSettings):
        self.settings = settings
        self.device = resolve_device(settings.device)  # BadSettings now, not at the first pass
        self._models: dict[str, LoadedModel] = {}
        self._failed: dict[str, ModelNotAvailable] = {}
        self._sources: dict[str, str] = {}  # run slug -> model source
        self.local = LocalModels()  # source -> (directory, why not here), decided once per source
        self._lock = threading.Lock()  # cache, in-flight requests, counters
        self._cache = LRUCache(settings.live_cache_size) if settings.live_cache_size else None
        self._inflight: dict[tuple, Future] = {}
        self._counts = {"hits": 0, "misses": 0}
        self.ready_at: dict[str, float] = {}
        self.engine = Engine(self._run_batch, group=lambda j: (j.source, j.kind), max_rows=settings.max_batch,
                             max_queue=settings.live_queue)

    @property
    def stats(self) -> dict:
        return {**self._counts, **self.engine.stats}

    def waiting(self) -> int:
        """Live requests waiting for the model."""
        return self.engine.waiting()

    # --- models (loaded on the model thread) -------------------------------------------------
    def preload(self, sources: dict[str, str]) -> list[Future]:
        """Load (then warm up) the models of ``sources`` (``{run slug: model source}``) on the
        model thread, in the background; the runs' states are known at once (:meth:`status`)."""
        futs = []
        for slug, src in sources.items():
            self._sources.setdefault(slug, src)
            if self.local(src)[1] is not None:  # not on this server: known now, never loaded
                continue
            futs.append(self.engine.call(lambda src=src: self._model(src)))
        return futs

    # --- availability (local files only: no request ever waits on the hub) -------------------
    def unavailable(self, source: str) -> str | None:
        """Why live passes cannot run on model ``source`` (it is not on this server, or failed to
        load), one line for a page; None when they can."""
        why = self.local(source)[1]
        if why is None and source in self._failed:
            why = f"the model {source} could not be loaded"
        return why

    def loaded(self, slug: str) -> bool:
        return self._sources.get(slug) in self._models

    def status(self) -> dict:
        """``{slug: "ready" | "loading" | "failed: <why>" | "unavailable: <why>"}`` of every run
        seen (unavailable: its model is not on this server; known at start)."""
        out = {}
        for slug, src in self._sources.items():
            why = self.local(src)[1]
            out[slug] = ("ready" if src in self._models else f"unavailable: {why}" if why is not None
                         else f"failed: {self._failed[src]}" if src in self._failed else "loading")
        return out

    def _model(self, source: str) -> LoadedModel:
        """The model of ``source`` (model thread only): loaded and warmed up on first use; a
        failure is kept and raised again.

        Raises:
            ModelNotAvailable: it cannot be loaded (the route answers 503).
        """
        m = self._models.get(source)
        if m is not None:
            return m
        if source in self._failed:
            raise self._failed[source]
        if self.settings.torch_threads:
            torch.set_num_threads(self.settings.torch_threads)
        t0 = time.perf_counter()
        path, why = self.local(source)
        if why is not None:  # never the hub: not on this server is final
            self._failed[source] = ModelNotAvailable(f"Live passes are off for this run: {why}.")
            raise self._failed[source]
        try:
            m = load_model(path, device=self.device, dtype=self.settings.dtype)
        except ModelNotAvailable as exc:
            logger.warning("live model %s: %s", source, exc)
            self._failed[source] = ModelNotAvailable(f"Live passes are off for this run: the model {source} "
                                                     f"could not be loaded.")
            raise self._failed[source] from exc
        # warm-up: the backend's processed weights and torch's first-call costs are paid here, so the
        # first live pass costs what a steady one does
        warm = Target("", m.n_layers - 1, 0, 0, "", Settings.of_run({}))
        n = min(64, m.n_ctx - 1)
        ids = (m.encode(WARM_TEXT) * n)[:n]  # real tokens: the shapes and code paths of a request
        live_views(m, [[m.bos_token_id] + ids] * 2, [n - 1] * 2, [warm, warm], [(), ((0, 0),)])
        live_knockouts(m, [[m.bos_token_id] + ids], [n - 1], [warm], [(0, 0)], [1])
        if m.d_vocab <= 1 << 17:  # every token's text, decoded once (the cache of token_str)
            for i in range(m.d_vocab):
                token_str(m.tokenizer, i)
        self._models[source] = m
        for slug, src in self._sources.items():
            if src == source:
                self.ready_at[slug] = time.time()
        logger.info("live model %s ready in %.1f s", source, time.perf_counter() - t0)
        return m

    # --- requests ----------------------------------------------------------------------------
    def submit(self, *, source: str, target: Target, prompt: str, ablate: list[tuple[int, int]],
               pos: int | None, head: tuple[int, int] | None = None) -> Future:
        """Queue ``prompt`` for the model of ``source``: ``target``'s neuron attributed at ``pos``
        (0-based among the prompt's tokens, BOS excluded; default the last), with ``ablate``
        heads' value vectors zero-ablated (paper §5.4) in a second pass, and ``head``'s look-up
        (its per-source decomposition in the clean pass, docs/method.md §3). Await the returned
        Future (``asyncio.wrap_future``) rather than block on it. Results are cached by (run,
        neuron, prompt, heads, pos, head); identical requests in flight share one computation.

        Raises:
            BadLiveInput: an empty prompt (at once); a position outside it, or a look-up head not
                upstream of the neuron (from the Future).
            PromptTooLong: more tokens than the server's cap (from the Future).
            ModelNotAvailable: the model cannot be loaded (from the Future).
            LiveBusy: too many requests are waiting (at once).
        """
        if not prompt or not prompt.strip():
            raise BadLiveInput("The prompt is empty: type some text to run the model on.")
        key = (target.slug, target.layer, target.neuron, prompt, tuple(ablate), pos, head)
        return self._enqueue(target.slug, LiveJob(key=key, source=source, prompt=prompt, heads=tuple(ablate),
                                                  pos=pos, head=head, target=target))

    def submit_knockout(self, *, source: str, target: Target, prompt: str, pos: int | None,
                        head: tuple[int, int], src: int) -> Future:
        """Queue the attention knockout of source ``src`` (0 = BOS, the sink; ``s`` = the prompt's
        token ``s - 1``) of ``head``'s look-up at ``pos`` (0-based, BOS excluded; default the last
        token) for ``target``'s neuron (docs/method.md §3, "Attention knockout"); cached and shared
        like :meth:`submit`. The Future gives :func:`~app.live.passes.live_knockouts`' dict.

        Raises:
            BadLiveInput: an empty prompt (at once); a position or source outside it, or a head not
                upstream of the neuron (from the Future). PromptTooLong, ModelNotAvailable (from the
                Future). LiveBusy: too many requests are waiting (at once).
        """
        if not prompt or not prompt.strip():
            raise BadLiveInput("The prompt is empty: type some text to run the model on.")
        key = ("knockout", target.slug, target.layer, target.neuron, prompt, pos, head, src)
        return self._enqueue(target.slug, LiveJob(key=key, source=source, prompt=prompt, heads=(), pos=pos,
                                                  head=head, target=target, kind="knockout", src=src))

    def submit_fire(self, *, source: str, columns: FireColumns, text: str) -> Future:
        """Queue ``text`` for "which neurons fire" on the model of ``source`` (:mod:`app.live.fire`;
        ``columns``: the run's analysed neurons); cached and shared like :meth:`submit`.

        Raises:
            BadLiveInput: an empty text (at once). LiveBusy: too many requests are waiting (at
            once). From the Future: PromptTooLong, ModelNotAvailable.
        """
        if not text or not text.strip():
            raise BadLiveInput("The text is empty: type some text to run the model on.")
        key = ("fire", columns.slug, text)
        return self._enqueue(columns.slug, FireJob(key=key, source=source, prompt=text, columns=columns))

    def _enqueue(self, slug: str, job) -> Future:
        """The cached result of ``job.key``, the Future of the same request in flight, or ``job``
        queued for the model thread (run ``slug``'s)."""
        key = job.key
        with self._lock:
            self._sources.setdefault(slug, job.source)
            if self._cache is not None and key in self._cache:
                self._counts["hits"] += 1
                fut: Future = Future()
                fut.set_result(self._cache[key])
                return fut
            if key in self._inflight:
                self._counts["hits"] += 1
                return self._inflight[key]
            self._inflight[key] = job.future
        try:
            self.engine.submit(job)
        except Exception:
            with self._lock:
                self._inflight.pop(key, None)
            raise
        return job.future

    def close(self) -> None:
        self.engine.close()

    # --- the model thread --------------------------------------------------------------------
    def _run_batch(self, jobs: list) -> None:
        """Run a batch of one model's jobs of one kind: the neuron page's through
        :func:`~app.live.passes.live_views`, "which neurons fire" through
        :func:`~app.live.fire.run_fire_batch`, each through the one loop
        :func:`~app.live.passes.serve_batch` (tokenize, check, length-sorted sub-batches of at most
        ``max_batch_tokens`` padded tokens, settle each job's Future and the cache)."""
        try:
            model = self._model(jobs[0].source)
        except ModelNotAvailable as exc:
            for j in jobs:
                self._settle(j, error=exc)
            return
        cap = min(self.settings.token_cap, model.n_ctx - 1)  # BOS takes one position
        token_cap = self.settings.token_cap
        if jobs[0].kind == "fire":
            return run_fire_batch(model, jobs, check_ids=lambda ids: check_ids(ids, None, cap, token_cap),
                                  settle=self._settle, max_batch_tokens=self.settings.max_batch_tokens,
                                  max_batch=self.settings.max_batch)

        if jobs[0].kind == "knockout":
            return serve_batch(
                model, jobs, check=lambda j, ids: check_ids(ids, j.pos, cap, token_cap)
                or check_head(model, j.head, j.target) or check_source(j.src, j.pos, len(ids)),
                compute=lambda batch: live_knockouts(
                    model, [[model.bos_token_id] + j.ids for j in batch],
                    [len(j.ids) - 1 if j.pos is None else j.pos for j in batch], [j.target for j in batch],
                    [j.head for j in batch], [j.src for j in batch]),
                settle=self._settle, max_tokens=self.settings.max_batch_tokens,
                max_rows=self.settings.max_batch)

        def compute(batch: list[LiveJob]) -> list[dict]:
            outs = live_views(model, [[model.bos_token_id] + j.ids for j in batch],
                              [len(j.ids) - 1 if j.pos is None else j.pos for j in batch],
                              [j.target for j in batch], [j.heads for j in batch], [j.head for j in batch])
            for j, out in zip(batch, outs, strict=True):
                out["prompt"] = j.prompt
            return outs

        serve_batch(model, jobs, check=lambda j, ids: check_ids(ids, j.pos, cap, token_cap)
                    or check_head(model, j.head, j.target), compute=compute, settle=self._settle,
                    max_tokens=self.settings.max_batch_tokens, max_rows=self.settings.max_batch)

    def _settle(self, job, *, result: dict | None = None, error: BaseException | None = None):
        with self._lock:
            self._inflight.pop(job.key, None)
            if error is None:
                self._counts["misses"] += 1
                if self._cache is not None:
                    self._cache[job.key] = result
        if job.future.done():  # settled already (e.g. by a failing batch)
            return
        if error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(result)
