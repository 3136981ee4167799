"""The models of the live model process and the batches it runs on them (:mod:`app.live.worker`,
on its model thread): each run's model loaded from its local files and warmed up, then every
batch of live jobs through the one loop :func:`~app.live.passes.serve_batch`.

The jobs are plain values that crossed from the web process (:class:`LiveJob`, and
:class:`~app.live.fire.FireJob` for "which neurons fire"); so are the results and the errors
settled back (JSON-able dicts, :class:`~precompute.core.errors.LookupsError`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from context_lookups.precompute.core.errors import ModelNotAvailable
from context_lookups.precompute.core.settings import Settings
from context_lookups.precompute.model import LoadedModel, load_model, resolve_device

from ..settings import WebSettings
from .fire import run_fire_batch
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
    """One live request for the model process (plain values): ``heads`` ablated, attribution at
    ``pos`` (0-based, BOS excluded; None: the last token), ``head`` the head whose look-up is
    shown (or None); for a knockout (``kind="knockout"``), ``src`` the source of ``head``'s look-up
    knocked out. ``id`` names it for the web process; ``ids`` are its tokens, set on the model
    thread."""

    id: int
    source: str
    prompt: str
    target: Target
    heads: tuple[tuple[int, int], ...]
    pos: int | None
    head: tuple[int, int] | None = None
    ids: list[int] = field(default_factory=list)
    kind: str = "neuron"  # the engine batches jobs of one model and kind ("knockout"; app.live.fire: "fire")
    src: int | None = None  # a knockout's source of ``head``'s look-up (0: BOS, the sink)


Settle = Callable[..., None]  # settle(job, result=dict) or settle(job, error=exception)


class ModelHost:
    """The models of one live model process and the batches run on them (model thread only)."""

    def __init__(self, settings: WebSettings):
        self.settings = settings
        self.device = resolve_device(settings.device)
        self.paths: dict[str, str] = {}  # source -> local directory (the web process decided it)
        self._models: dict[str, LoadedModel] = {}
        self._failed: dict[str, ModelNotAvailable] = {}

    def model(self, source: str) -> LoadedModel:
        """The model of ``source``: loaded from ``self.paths[source]`` and warmed up on first use;
        a failure is kept and raised again.

        Raises:
            ModelNotAvailable: it cannot be loaded (the route answers 503).
        """
        m = self._models.get(source)
        if m is not None:
            return m
        if source in self._failed:
            raise self._failed[source]
        t0 = time.perf_counter()
        try:
            if source not in self.paths:  # the web process sends a model's directory before its jobs
                raise ModelNotAvailable(f"no local directory was given for {source}")
            m = load_model(self.paths[source], device=self.device, dtype=self.settings.dtype)
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
        logger.info("live model %s ready in %.1f s", source, time.perf_counter() - t0)
        return m

    def run_batch(self, jobs: list, settle: Settle) -> None:
        """Run a batch of one model's jobs of one kind: the neuron page's through
        :func:`~app.live.passes.live_views`, a source's knockout through
        :func:`~app.live.passes.live_knockouts`, "which neurons fire" through
        :func:`~app.live.fire.run_fire_batch`, each through the one loop
        :func:`~app.live.passes.serve_batch` (tokenize, check, length-sorted sub-batches of at most
        ``max_batch_tokens`` padded tokens), each job settled with ``settle``."""
        try:
            model = self.model(jobs[0].source)
        except ModelNotAvailable as exc:
            for j in jobs:
                settle(j, error=exc)
            return
        cap = min(self.settings.token_cap, model.n_ctx - 1)  # BOS takes one position
        token_cap = self.settings.token_cap
        if jobs[0].kind == "fire":
            return run_fire_batch(model, jobs, check_ids=lambda ids: check_ids(ids, None, cap, token_cap),
                                  settle=settle, max_batch_tokens=self.settings.max_batch_tokens,
                                  max_batch=self.settings.max_batch)
        if jobs[0].kind == "knockout":
            return serve_batch(
                model, jobs, check=lambda j, ids: check_ids(ids, j.pos, cap, token_cap)
                or check_head(model, j.head, j.target) or check_source(j.src, j.pos, len(ids)),
                compute=lambda batch: live_knockouts(
                    model, [[model.bos_token_id] + j.ids for j in batch],
                    [len(j.ids) - 1 if j.pos is None else j.pos for j in batch], [j.target for j in batch],
                    [j.head for j in batch], [j.src for j in batch]),
                settle=settle, max_tokens=self.settings.max_batch_tokens, max_rows=self.settings.max_batch)

        def compute(batch: list[LiveJob]) -> list[dict]:
            outs = live_views(model, [[model.bos_token_id] + j.ids for j in batch],
                              [len(j.ids) - 1 if j.pos is None else j.pos for j in batch],
                              [j.target for j in batch], [j.heads for j in batch], [j.head for j in batch])
            for j, out in zip(batch, outs, strict=True):
                out["prompt"] = j.prompt
            return outs

        serve_batch(model, jobs, check=lambda j, ids: check_ids(ids, j.pos, cap, token_cap)
                    or check_head(model, j.head, j.target), compute=compute, settle=settle,
                    max_tokens=self.settings.max_batch_tokens, max_rows=self.settings.max_batch)

