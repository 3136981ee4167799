"""Live forward passes for the explorer: one model per run (loaded lazily, then kept), one lock
that serialises every forward pass, a token cap, and an LRU cache of recent results.

The science is precompute's: head attribution is :func:`precompute.attribution.attribute`,
head ablation :func:`precompute.ablation.ablate` (and its hooks); nothing here re-derives them.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass

from precompute.attribution import (active_heads_of_run, attribute, head_label, parse_heads, scored_layers,
                                    upstream_attn_layers)
from precompute.errors import LookupsError, PromptTooLong
from precompute.models import LoadedModel, load_model
from precompute.schema import Neuron, Run
from precompute.settings import EMBEDDED_MODEL, Settings
from precompute.tokens import partial_tokens

from .settings import WebSettings

logger = logging.getLogger(__name__)


class BadLiveInput(LookupsError):
    """A live request the server cannot run: empty prompt, malformed head list, bad position."""


@dataclass(eq=False)
class _Job:
    """One live request waiting for (or served by) a batched pass."""

    key: tuple
    batch: tuple
    ids: list[int]
    pos: int
    done: bool = False
    result: dict | None = None
    error: BaseException | None = None


def model_source(run: Run, settings: WebSettings) -> str:
    """Where the run's model is loaded from (a name or a local directory)."""
    if run.slug in settings.model_paths:
        return settings.model_paths[run.slug]
    return EMBEDDED_MODEL if run.model_name == "embedded" else run.model_name


class Live:
    """The live engine of one server process (thread-safe)."""

    def __init__(self, settings: WebSettings):
        self.settings = settings
        self.lock = threading.Lock()  # every forward pass runs under it
        self._load_lock = threading.Lock()
        self.tok_lock = threading.Lock()  # tokenizer calls outside forward passes
        self._models: dict[str, LoadedModel] = {}
        self._tokenizers: dict[str, object] = {}
        self._partial: dict[str, dict[int, bytes]] = {}
        self._cache: OrderedDict = OrderedDict()
        self._cache_lock = threading.Lock()
        self._queue: list[_Job] = []  # requests waiting for the model
        self._queue_lock = threading.Lock()
        self.stats = {"hits": 0, "misses": 0, "batches": 0, "batched": 0}

    # --- models ------------------------------------------------------------------------------
    def loaded(self, slug: str) -> bool:
        return slug in self._models

    def model(self, run: Run) -> LoadedModel:
        """The run's model, loaded on first use and kept.

        Raises:
            ModelNotAvailable: it cannot be loaded (the route answers 503).
        """
        m = self._models.get(run.slug)
        if m is None:
            with self._load_lock:
                m = self._models.get(run.slug)
                if m is None:
                    if self.settings.torch_threads:
                        import torch

                        torch.set_num_threads(self.settings.torch_threads)
                    m = load_model(model_source(run, self.settings), device=self.settings.device)
                    self._models[run.slug] = m
        return m

    def tokenizer(self, run: Run):
        """The run's tokenizer: the live model's if loaded, else loaded alone from a local
        model directory or the local Hugging Face cache; None if neither is possible."""
        if run.slug in self._models:
            return self._models[run.slug].tokenizer
        if run.slug not in self._tokenizers:
            tok = None
            try:
                from transformers import AutoTokenizer

                tok = AutoTokenizer.from_pretrained(model_source(run, self.settings))
            except Exception as exc:  # offline, unknown name, ...: fall back to plain text
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

    def check_prompt(self, prompt: str) -> None:
        if not prompt or not prompt.strip():
            raise BadLiveInput("The prompt is empty: type some text to run the model on.")

    # --- the pass ----------------------------------------------------------------------------
    def run(self, *, run: Run, neuron: Neuron, prompt: str, ablate: list[tuple[int, int]],
            pos: int | None) -> dict:
        """Run ``prompt`` through the run's model and attribute neuron (layer, neuron) at
        ``pos`` (0-based index among the prompt's tokens, BOS excluded; default the last).

        With ``ablate`` heads, the same figures with those heads' value vectors zero-ablated
        (paper §5.4) and the change. Results are cached by (run, neuron, prompt, heads, pos).

        Raises:
            BadLiveInput: empty prompt or a position outside it.
            PromptTooLong: more tokens than the server's cap.
            ModelNotAvailable: the model cannot be loaded.
        """
        self.check_prompt(prompt)
        key = (run.slug, neuron.layer, neuron.neuron, prompt, tuple(ablate), pos)
        with self._cache_lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                self.stats["hits"] += 1
                return self._cache[key]
        model = self.model(run)
        with self.tok_lock:  # HF fast tokenizers are not safe to share between threads
            ids = model.encode(prompt)
        cap = min(self.settings.token_cap, model.n_ctx - 1)  # BOS takes one position
        if len(ids) > cap:
            why = "" if cap == self.settings.token_cap else " (the model's context length, minus BOS)"
            raise PromptTooLong(f"The prompt has {len(ids)} tokens; the limit of this server is "
                                f"{cap} tokens{why}. Shorten it.")
        if not ids:
            raise BadLiveInput("The prompt is empty after tokenization.")
        if pos is not None and not 0 <= pos < len(ids):
            raise BadLiveInput(f"pos {pos} out of range: the prompt has {len(ids)} tokens "
                               f"(positions 0..{len(ids) - 1}).")
        p = len(ids) - 1 if pos is None else pos
        job = _Job(key=key, batch=(run.slug, neuron.layer, neuron.neuron, tuple(ablate)), ids=ids, pos=p)
        with self._queue_lock:
            self._queue.append(job)
        with self.lock, self.tok_lock:
            if not job.done:  # this request leads: it runs every queued job of its batch
                self._run_batch(run, model, neuron, job, ablate)
        if job.error is not None:
            raise job.error
        return job.result

    def _run_batch(self, run: Run, model: LoadedModel, neuron: Neuron, lead: _Job,
                   heads: list[tuple[int, int]]) -> None:
        """Micro-batching: requests that wait for the model and share (run, neuron, ablated
        heads) go through attribute()/ablate() as one batch (rows padded; causal attention, so
        each row's figures are those of its own pass)."""
        with self._queue_lock:
            batch = [j for j in self._queue if j.batch == lead.batch][:self.settings.max_batch]
            if lead not in batch:
                batch[-1:] = [lead]
            for j in batch:
                self._queue.remove(j)
        try:
            todo = []
            with self._cache_lock:  # some may have been answered meanwhile
                for j in batch:
                    if j.key in self._cache:
                        j.result, j.done = self._cache[j.key], True
                        self.stats["hits"] += 1
                    else:
                        todo.append(j)
            if todo:
                results = self._compute(run, model, neuron, [j.ids for j in todo], [j.pos for j in todo], heads)
                with self._cache_lock:
                    for j, r in zip(todo, results):
                        r["prompt"] = j.key[3]
                        j.result = r
                        self.stats["misses"] += 1
                        if self.settings.live_cache_size:
                            self._cache[j.key] = r
                    while len(self._cache) > self.settings.live_cache_size:
                        self._cache.popitem(last=False)
                self.stats["batches"] += 1
                self.stats["batched"] += len(todo)
        except Exception as exc:  # every request of the batch gets the error
            for j in batch:
                j.error = exc
        finally:
            for j in batch:
                j.done = True

    def _compute(self, run: Run, model: LoadedModel, neuron: Neuron, ids: list[list[int]],
                 pos: list[int], ablate_heads: list[tuple[int, int]]) -> list[dict]:
        """attribute() for the heatmap; ablate() for the token's probability and the top-5
        (with ``[]`` heads it runs the clean pass only); with heads, attribute() again under
        precompute's ablation hooks for the ablated heatmap. One batch of prompts."""
        from precompute.ablation import ablate, ablation_hooks

        rows = [[model.bos_token_id] + x for x in ids]
        positions = [p + 1 for p in pos]
        layer, idx = neuron.layer, neuron.neuron
        rs = Settings.of_run(run.settings)
        n_scored = scored_layers(layer, rs.heads_upto, upstream_attn_layers(model, layer))
        att = attribute(model, rows, layer, idx, positions=positions)
        res = ablate(model, rows, layer, idx, neuron.token_id, ablate_heads, method="zero",
                     positions=positions)
        abl = None
        if ablate_heads:
            with model.bridge.hooks(fwd_hooks=ablation_hooks(ablate_heads, method="zero", mean_v=None)):
                abl = attribute(model, rows, layer, idx, positions=positions)
        outs = []
        for b, (x, p) in enumerate(zip(ids, pos)):
            out = {
                "n_tokens": len(x), "pos": p, "token_ids": x,
                "tokens": [model.token_str(i) for i in x],
                "acts": att.acts[b][1:], "act": float(att.act[b]), "pre": float(att.pre[b]),
                "attr_raw": att.raw[b].tolist(), "attr_ln": att.ln[b].tolist(), "n_scored": n_scored,
                "active": self._active(rs, att.raw[b, :n_scored], n_scored, model.n_heads),
                "token_id": neuron.token_id, "token": neuron.token,
                "prob": float(res.prob_clean[b]), "top5": self._top(model, res.top_clean[b]),
                "ablation": None,
            }
            if abl is not None:
                out["ablation"] = {
                    "heads": [head_label(k, h) for k, h in ablate_heads], "method": "zero",
                    "act_clean": float(res.act_clean[b]), "act_ablated": float(res.act_ablated[b]),
                    "prob_clean": float(res.prob_clean[b]), "prob_ablated": float(res.prob_ablated[b]),
                    "drop": float(res.drop[b]), "acts": res.acts_ablated[b][1:],
                    "attr_raw": abl.raw[b].tolist(), "attr_ln": abl.ln[b].tolist(),
                    "active": self._active(rs, abl.raw[b, :n_scored], n_scored, model.n_heads),
                    "top5": self._top(model, res.top_ablated[b]),
                }
            outs.append(out)
        return outs

    @staticmethod
    def _active(rs: Settings, scores, n_scored: int, n_heads: int) -> list[str]:
        mask = active_heads_of_run(scores.flatten(), rs)
        return [head_label(k, h) for k in range(n_scored) for h in range(n_heads) if mask[k * n_heads + h]]

    @staticmethod
    def _top(model: LoadedModel, top: list[tuple[int, float]]) -> list[list]:
        return [[int(i), model.token_str(int(i)), float(v)] for i, v in top]
