"""The run context of a page request: the run resolved ONCE into one object that holds everything
a page needs to know about it: the run row, its settings and rules, the E rule it is judged by
(docs/method.md §5), the tokenizer its tokens are shown with, and whether its model can run
live passes on this server.

The tokenizer is the run's own, loaded from the run's model files on this server
(:mod:`app.model_files`) by the project's one tokenizer-loading function
(:func:`precompute.model.load_tokenizer`), never taken from the live engine; without those files
the pages show the stored token texts as they are. Nothing here imports the live half: whether
live passes can run is asked of the ``availability`` function the app hands in (the live half's
``unavailable``).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from cachetools import LRUCache, cached
from sqlalchemy.orm import Session

from context_lookups.precompute.core.errors import BadLiveInput
from context_lookups.precompute.core.settings import Settings
from context_lookups.precompute.core.tokens import partial_tokens
from context_lookups.precompute.explain.scoring import run_rule
from context_lookups.precompute.heads.attribution import parse_heads
from context_lookups.precompute.model import load_tokenizer
from context_lookups.precompute.store.schema import Run

from ..model_files import LocalModels, model_source
from ..settings import WebSettings
from .present import token_fields
from .queries import get_run

logger = logging.getLogger(__name__)


@cached(LRUCache(maxsize=64), key=lambda stored: json.dumps(stored or {}, sort_keys=True),
        lock=threading.Lock())
def run_rules(stored: dict | None) -> Settings:
    """``Settings.of_run(stored)`` (a run's rules: active-head rule, heads_upto, context), cached:
    pydantic-settings validation costs milliseconds and a run's stored settings never change
    while the server runs. Shared: do not modify the returned object."""
    return Settings.of_run(stored)


@dataclass
class RunTokenizer:
    """A run's tokenizer as the pages use it: ``tokenizer`` (None when its files are not on this
    server), ``partial``: its tokens that are parts of a UTF-8 character
    (:func:`precompute.core.tokens.partial_tokens`, empty without a tokenizer), and ``lock``:
    Hugging Face fast tokenizers are not safe to share between threads."""

    tokenizer: object | None
    partial: dict[int, bytes]
    lock: threading.Lock = field(default_factory=threading.Lock)

    def windows(self, docs: list[dict], *, ctx: int, window: int) -> list[dict]:
        """Each top document's ``window`` tokens before its max-activating position (``position``,
        BOS at 0) and that token, as the run's tokenizer splits it: ``tokens``, their shown forms
        (``tokens_escaped``, ``tokens_joined``) and ``truncated_before``; ``tokens`` None without
        a tokenizer (the text alone). ``docs`` are changed in place and returned.

        Only a prefix of each document is tokenized (``ctx * 24`` characters): cutting the text
        can change only the prefix's last token, so the prefix is enough whenever the wanted
        position lies before it; otherwise the whole text is tokenized."""
        tok = self.tokenizer
        for d in docs:
            d["tokens"] = None
        if tok is None or not docs:
            return docs
        kw = dict(add_special_tokens=False, truncation=True, max_length=ctx - 1)
        with self.lock:
            enc = tok([d["text"][:ctx * 24] for d in docs], **kw)["input_ids"]
            for d, ids in zip(docs, enc, strict=True):
                i = d["position"] - 1  # position counts BOS at 0
                if i + 1 >= len(ids) and len(d["text"]) > ctx * 24:
                    ids = tok(d["text"], **kw)["input_ids"]
                if 0 <= i < len(ids):
                    lo = max(0, i - window)
                    d["tokens"] = tok.batch_decode([[t] for t in ids[lo:i + 1]])
                    d.update(token_fields(ids[lo:i + 1], d["tokens"], self.partial))
                    d["truncated_before"] = lo > 0
        return docs


@dataclass(frozen=True)
class RunContext:
    """One run as a page request sees it, resolved once (:meth:`RunContexts.resolve`).

    ``run``: the run row; ``rules``: its settings (``Settings.of_run``: active-head rule,
    heads_upto, pair rule, context length; shared, do not modify); ``e_rule``: the E rule it is
    judged by (``explain.scoring.run_rule``: ``"authors"`` for imported runs, else
    ``"project"``); ``tokens``: its :class:`RunTokenizer`; ``model_source``: where its model
    loads from; ``model_notice``: one line saying why live passes cannot run on it (None when
    they can)."""

    run: Run
    rules: Settings
    e_rule: str
    tokens: RunTokenizer
    model_source: str
    model_notice: str | None

    @property
    def slug(self) -> str:
        return self.run.slug

    @property
    def partial(self) -> dict[int, bytes]:
        """The run's partial UTF-8 tokens (see :class:`RunTokenizer`)."""
        return self.tokens.partial

    @property
    def context_tokens(self) -> int:
        """Tokens per document the run scanned, BOS included."""
        return self.rules.context_tokens or self.run.n_ctx

    def parse_heads(self, text: str | None) -> list[tuple[int, int]]:
        """Heads ``"L1H3,L0H2"`` of the run's model (empty: none).

        Raises:
            BadLiveInput: a malformed label or a head the model does not have.
        """
        try:
            return parse_heads(text or "", n_layers=self.run.n_layers, n_heads=self.run.n_heads)
        except ValueError as exc:
            raise BadLiveInput(str(exc)) from None

    def parse_head(self, text: str | None) -> tuple[int, int] | None:
        """The one head ``L{k}H{h}`` whose look-up a live view shows (empty: none).

        Raises:
            BadLiveInput: not one well-formed head of the model.
        """
        heads = self.parse_heads(text)
        if len(heads) > 1:
            raise BadLiveInput(f"head={text!r} names {len(heads)} heads: give one, e.g. L1H3.")
        return heads[0] if heads else None


class RunContexts:
    """Resolves runs into :class:`RunContext` for the pages of one app (thread-safe), keeping
    each run's tokenizer once loaded.

    ``availability(source)`` says why a model source cannot run live passes here (None when it
    can): the live half's answer, handed in by the app so that the pages import nothing of it.
    """

    def __init__(self, settings: WebSettings, availability: Callable[[str], str | None] | None = None):
        self.settings = settings
        self.availability = availability or (lambda source: self.local(source)[1])
        self._tokens: dict[str, RunTokenizer] = {}
        self.local = LocalModels()  # source -> (directory, why not here), decided once per source
        self._lock = threading.Lock()

    def resolve(self, session: Session, slug: str) -> RunContext:
        """The context of the run called ``slug``.

        Raises:
            NotFound: no such run (the message names the runs that exist).
        """
        return self.of(get_run(session, slug=slug))

    def of(self, run: Run) -> RunContext:
        """The context of a run row already read."""
        source = model_source(run, self.settings)
        return RunContext(run=run, rules=run_rules(run.settings), e_rule=run_rule(run),
                          tokens=self.tokenizer(run), model_source=source,
                          model_notice=self.model_notice(run))

    def model_notice(self, run: Run) -> str | None:
        """One line saying live passes cannot run on ``run`` and why (its model is not on this
        server, or failed to load), known without waiting on anything; None when they can."""
        why = self.availability(model_source(run, self.settings))
        return f"Live passes are off for this run: {why}." if why else None

    def tokenizer(self, run: Run) -> RunTokenizer:
        """The run's tokenizer for pages, loaded once (:func:`precompute.model.load_tokenizer`)
        from its model's local files; without them, or when they do not load, none (the pages
        then show the stored token texts)."""
        got = self._tokens.get(run.slug)
        if got is not None:
            return got
        with self._lock:
            got = self._tokens.get(run.slug)
            if got is None:
                got = self._tokens[run.slug] = self._load(run)
        return got

    def _load(self, run: Run) -> RunTokenizer:
        path = self.local(model_source(run, self.settings))[0]
        tok = None
        if path is not None:  # a model not on this server: plain text, never the hub
            try:
                tok = load_tokenizer(path)
            except Exception as exc:  # a broken directory: fall back to plain text
                logger.info("no tokenizer for run %s: %s", run.slug, exc)
        return RunTokenizer(tok, partial_tokens(tok) if tok is not None else {})

    def preload(self, runs: list[Run]) -> None:
        """Load the tokenizers of ``runs`` now (at start-up, off the request path)."""
        for run in runs:
            self.tokenizer(run)
