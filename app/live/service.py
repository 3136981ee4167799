"""Live forward passes for the explorer: the run's models load in the background at server
start, one worker thread (:mod:`app.engine`) runs every forward pass, a token cap, single-flight
and an LRU cache of recent results.

The science is precompute's: a live view is the model backend's ``clean_view`` (activations,
raw and LN-aware head attribution, the token's probability and the top-5, in ONE forward pass;
with a head selected, also that pass's per-source decomposition, docs/method.md §3) and, when
heads are ablated, its ``ablated_view`` — the passes the precompute job batches
through, on whichever backend the model was loaded with (:mod:`precompute.model`). Nothing here
re-derives them: :func:`live_views` is the one place where the live server does model work.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

from cachetools import LRUCache, cached

from context_lookups.precompute.core.errors import ModelNotAvailable
from context_lookups.precompute.core.settings import EMBEDDED_MODEL, Settings
from context_lookups.precompute.core.tokens import partial_tokens
from context_lookups.precompute.heads.attribution import parse_heads
from context_lookups.precompute.model import LoadedModel, length_batches, load_model, resolve_device
from context_lookups.precompute.store.schema import Neuron, Run

from ..settings import WebSettings
from .engine import Engine
from .passes import _WARM_TEXT, BadLiveInput, _check_head, _check_ids, _token_str, live_views

logger = logging.getLogger(__name__)


@cached(LRUCache(maxsize=64), key=lambda stored: json.dumps(stored or {}, sort_keys=True),
        lock=threading.Lock())
def run_rules(stored: dict | None) -> Settings:
    """``Settings.of_run(stored)`` (a run's rules: active-head rule, heads_upto, context), cached:
    pydantic-settings validation costs milliseconds and a run's stored settings never change
    while the server runs. Shared: do not modify the returned object."""
    return Settings.of_run(stored)


def model_source(run: Run, settings: WebSettings) -> str:
    """Where the run's model is loaded from (a name or a local directory)."""
    if run.slug in settings.model_paths:
        return settings.model_paths[run.slug]
    return EMBEDDED_MODEL if run.model_name == "embedded" else run.model_name


@dataclass(frozen=True)
class Target:
    """What a live view needs to know about its run and neuron (plain values: no ORM object
    crosses to the model thread). ``rules``: the run's settings (active-head rule, heads_upto)."""

    slug: str
    layer: int
    neuron: int
    token_id: int
    token: str
    rules: Settings


@dataclass(eq=False)
class LiveJob:
    """One live request for the model thread: ``heads`` ablated, attribution at ``pos`` (0-based,
    BOS excluded; None: the last token), ``head`` the head whose look-up is shown (or None)."""

    key: tuple
    source: str
    prompt: str
    target: Target
    heads: tuple[tuple[int, int], ...]
    pos: int | None
    head: tuple[int, int] | None = None
    future: Future = field(default_factory=Future)
    ids: list[int] = field(default_factory=list)
    kind: str = "neuron"  # the engine batches jobs of one model and kind (app.fire: "fire")


class Live:
    """The live engine of one server process (thread-safe)."""

    def __init__(self, settings: WebSettings):
        self.settings = settings
        self.device = resolve_device(settings.device)  # BadSettings now, not at the first pass
        self.tok_lock = threading.Lock()  # the pages' tokenizers (the model thread has its own)
        self._models: dict[str, LoadedModel] = {}
        self._failed: dict[str, ModelNotAvailable] = {}
        self._sources: dict[str, str] = {}  # run slug -> model source
        self._local: dict[str, tuple[str | None, str | None]] = {}  # source -> (directory, why not here)
        self._tokenizers: dict[str, object] = {}
        self._partial: dict[str, dict[int, bytes]] = {}
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

    # --- models (loaded on the model thread) -------------------------------------------------
    def preload(self, runs: list[Run]) -> list[Future]:
        """Load (then warm up) the models of ``runs`` on the model thread, in the background."""
        futs = []
        for run in runs:
            src = self._sources.setdefault(run.slug, model_source(run, self.settings))
            if self.local(src)[1] is not None:  # not on this server: known now, never loaded
                continue
            self.engine.call(lambda run=run: self.partial_tokens(run))  # pages and live need it
            futs.append(self.engine.call(lambda src=src: self._model(src)))
        return futs

    # --- availability (local files only: no request ever waits on the hub) -------------------
    def local(self, source: str) -> tuple[str | None, str | None]:
        """``app.model_cache.local_model(source)``, decided once per source."""
        got = self._local.get(source)
        if got is None:
            from ..model_files import local_model

            got = self._local[source] = local_model(source)
        return got

    def unavailable(self, run: Run) -> str | None:
        """Why live passes cannot run on ``run`` (its model is not on this server, or failed
        to load), one line for the page; None when they can."""
        src = self._sources.setdefault(run.slug, model_source(run, self.settings))
        why = self.local(src)[1]
        if why is None and src in self._failed:
            why = f"the model {src} could not be loaded"
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
            import torch

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
        warm = Target("", m.n_layers - 1, 0, 0, "", run_rules({}))
        n = min(64, m.n_ctx - 1)
        ids = (m.encode(_WARM_TEXT) * n)[:n]  # real tokens: the shapes and code paths of a request
        live_views(m, [[m.bos_token_id] + ids] * 2, [n - 1] * 2, [warm, warm], [(), ((0, 0),)])
        if m.d_vocab <= 1 << 17:  # every token's text, decoded once (the cache of _token_str)
            for i in range(m.d_vocab):
                _token_str(m.tokenizer, i)
        self._models[source] = m
        for slug, src in self._sources.items():
            if src == source:
                self.ready_at[slug] = time.time()
        logger.info("live model %s ready in %.1f s", source, time.perf_counter() - t0)
        return m

    def tokenizer(self, run: Run):
        """The run's tokenizer for pages (use under ``tok_lock``), loaded alone from a local model
        directory or the local Hugging Face cache; None if that is not possible."""
        if run.slug not in self._tokenizers:
            tok = None
            path = self.local(self._sources.setdefault(run.slug, model_source(run, self.settings)))[0]
            try:
                if path is not None:  # a model not on this server: plain text, never the hub
                    from transformers import AutoTokenizer

                    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
            except Exception as exc:  # a broken directory: fall back to plain text
                logger.info("no tokenizer for run %s: %s", run.slug, exc)
            self._tokenizers[run.slug] = tok
        return self._tokenizers[run.slug]

    def partial_tokens(self, run: Run) -> dict[int, bytes]:
        """The run's vocabulary tokens that are parts of a UTF-8 character, ``{id: bytes}``
        (:func:`precompute.tokens.partial_tokens`; empty without a tokenizer), kept per run."""
        got = self._partial.get(run.slug)
        if got is None:
            tok = self.tokenizer(run)
            with self.tok_lock:
                got = partial_tokens(tok) if tok is not None else {}
            self._partial[run.slug] = got
        return got

    # --- inputs ------------------------------------------------------------------------------
    def parse_ablate(self, run: Run, text: str | None) -> list[tuple[int, int]]:
        try:
            return parse_heads(text or "", n_layers=run.n_layers, n_heads=run.n_heads)
        except ValueError as exc:
            raise BadLiveInput(str(exc)) from None

    def parse_head(self, run: Run, text: str | None) -> tuple[int, int] | None:
        """The one head ``L{k}H{h}`` whose look-up a live view shows (empty: none).

        Raises:
            BadLiveInput: not one well-formed head of the model.
        """
        heads = self.parse_ablate(run, text)
        if len(heads) > 1:
            raise BadLiveInput(f"head={text!r} names {len(heads)} heads: give one, e.g. L1H3.")
        return heads[0] if heads else None

    def check_prompt(self, prompt: str) -> None:
        if not prompt or not prompt.strip():
            raise BadLiveInput("The prompt is empty: type some text to run the model on.")

    # --- requests ----------------------------------------------------------------------------
    def submit(self, *, run: Run, neuron: Neuron, prompt: str, ablate: list[tuple[int, int]],
               pos: int | None, head: tuple[int, int] | None = None) -> Future:
        """Queue ``prompt`` for the run's model: neuron (layer, neuron) attributed at ``pos``
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
        self.check_prompt(prompt)
        key = (run.slug, neuron.layer, neuron.neuron, prompt, tuple(ablate), pos, head)
        return self._enqueue(key, lambda src: LiveJob(
            key=key, source=src, prompt=prompt, heads=tuple(ablate), pos=pos, head=head,
            target=Target(run.slug, neuron.layer, neuron.neuron, neuron.token_id, neuron.token,
                          run_rules(run.settings))), run)

    def submit_fire(self, *, run: Run, index, text: str) -> Future:
        """Queue ``text`` for "which neurons fire" (:mod:`app.fire`; ``index``: the run's
        :class:`app.fire.RunIndex`); cached and shared like :meth:`submit`.

        Raises:
            BadLiveInput: an empty text (at once). LiveBusy: too many requests are waiting (at
            once). From the Future: PromptTooLong, ModelNotAvailable.
        """
        from .fire import FireJob

        if not text or not text.strip():
            raise BadLiveInput("The text is empty: type some text to run the model on.")
        key = ("fire", run.slug, text)
        return self._enqueue(key, lambda src: FireJob(key=key, source=src, prompt=text, index=index), run)

    def _enqueue(self, key: tuple, make, run: Run) -> Future:
        """The cached result of ``key``, the Future of the same request in flight, or a new job
        ``make(model source)`` queued for the model thread."""
        with self._lock:
            if self._cache is not None and key in self._cache:
                self._counts["hits"] += 1
                fut: Future = Future()
                fut.set_result(self._cache[key])
                return fut
            if key in self._inflight:
                self._counts["hits"] += 1
                return self._inflight[key]
            job = make(self._sources.setdefault(run.slug, model_source(run, self.settings)))
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
    def _run_batch(self, jobs: list[LiveJob]) -> None:
        """Tokenize and check a batch of one model's jobs, then run them through
        :func:`live_views` in length-sorted sub-batches of at most ``max_batch_tokens``
        padded tokens; settle each job's Future (and the cache). Jobs of "which neurons fire"
        (one kind per batch) go to :func:`app.fire.run_fire_batch`."""
        try:
            model = self._model(jobs[0].source)
        except ModelNotAvailable as exc:
            for j in jobs:
                self._settle(j, error=exc)
            return
        cap = min(self.settings.token_cap, model.n_ctx - 1)  # BOS takes one position
        if jobs[0].kind == "fire":
            from .fire import run_fire_batch

            return run_fire_batch(self, model, jobs, lambda ids: _check_ids(ids, None, cap, self.settings.token_cap))
        enc = model.tokenizer([j.prompt for j in jobs], add_special_tokens=False)["input_ids"]
        ok = []
        for j, ids in zip(jobs, enc):
            err = _check_ids(ids, j.pos, cap, self.settings.token_cap) or _check_head(model, j)
            if err is not None:
                self._settle(j, error=err)
            else:
                j.ids = list(ids)
                ok.append(j)
        for idx in length_batches([len(j.ids) for j in ok], self.settings.max_batch_tokens,
                                  self.settings.max_batch):
            batch = [ok[i] for i in idx]
            try:
                outs = live_views(model, [[model.bos_token_id] + j.ids for j in batch],
                                  [len(j.ids) - 1 if j.pos is None else j.pos for j in batch],
                                  [j.target for j in batch], [j.heads for j in batch],
                                  [j.head for j in batch])
            except Exception as exc:  # every request of this sub-batch gets the error
                for j in batch:
                    self._settle(j, error=exc)
                continue
            for j, out in zip(batch, outs):
                out["prompt"] = j.prompt
                self._settle(j, result=out)

    def _settle(self, job: LiveJob, *, result: dict | None = None, error: BaseException | None = None):
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


