"""Stored results as pandas DataFrames: :func:`open` a database the explorer reads (SQLite or
PostgreSQL, read-only as the server opens it), then its runs, neurons, pairs, prompts,
explanations, ablations and findings.

Every frame is built from the dicts the explorer's ``.json`` twins return, by the same page
functions the routes call (:mod:`app.pages.views`, :mod:`app.pages.neuron`): a frame's rows are
a list page's rows (all of them, as its ``.csv`` twin gives them) and its columns the twin's
fields. ``DataFrame.attrs`` holds ``run``, ``filter``, ``units`` and ``columns`` (what each
column means: :mod:`context_lookups.columns`). The single objects, :meth:`Run.neuron` and
:meth:`Run.pair`, hold the page's twin itself (``to_dict()``) and show the page inline.
"""

from __future__ import annotations

import gc
import math
import operator
import os
from contextlib import contextmanager
from dataclasses import dataclass, field

import pandas as pd
from sqlalchemy.orm import Session

from context_lookups.app.model_files import LocalModels, model_source
from context_lookups.app.pages import fire as fire_page
from context_lookups.app.pages import neuron as neuron_page
from context_lookups.app.pages import queries as Q
from context_lookups.app.pages import urls, views
from context_lookups.app.pages.context import RunContext, RunContexts
from context_lookups.app.pages.markup import LockedLRU
from context_lookups.app.pages.present import ablation_dict, run_dict
from context_lookups.app.settings import WebSettings
from context_lookups.precompute.ablation.reads import ablation_rows
from context_lookups.precompute.core.errors import ModelNotAvailable, NotFound
from context_lookups.precompute.heads.attribution import head_label
from context_lookups.precompute.heads.reads import neuron_pairs
from context_lookups.precompute.model import load_model
from context_lookups.precompute.neurons.reads import get_neuron
from context_lookups.precompute.store.db import open_reader, sessions

from . import columns as C
from .display import page_html

ALL = 2**31 - 1  # "every row" as a page size (a list's frame holds all the rows its CSV twin has)
PAIR_KINDS = ("selected", "next_token", "random")
BASE_URL_ENV = "LOOKUPS_BASE_URL"
HOME_APART = ("counts", "links")  # spread into columns / the server's URLs


def frame(rows: list[dict], *, tables: str, **attrs) -> pd.DataFrame:
    """A DataFrame of twin rows (one row per dict, its columns the dicts' keys in order of first
    appearance; a key a row lacks is null there) with
    ``attrs``: the given ones, ``units`` and ``columns`` (:mod:`context_lookups.columns`)."""
    keys = dict.fromkeys(rows[0]) if rows else {}
    for r in rows:  # the rows of one twin may differ (a pair page's held-out prompts have more fields)
        if len(r) != len(keys) or r.keys() != keys.keys():
            keys.update(dict.fromkeys(r))
    df = pd.DataFrame.from_records(rows, columns=list(keys) or None)
    df.attrs.update(attrs)
    df.attrs["units"] = C.units(df.columns)
    df.attrs["columns"] = C.describe(df.columns, tables)
    return df


@contextmanager
def _no_gc():
    """The cyclic garbage collector paused while a read builds its rows: a list of thousands of
    ORM rows made many collections that freed nothing (a frame of 2,848 pairs took several
    times longer with them); reference counting still frees everything at once."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def integer(name: str, value, *, optional: bool = False) -> int | None:
    """``value`` as a Python int (numpy integers too, as a DataFrame's cells are).

    Raises:
        ValueError: not an integer (None only when ``optional``)."""
    if value is None and optional:
        return None
    try:
        return operator.index(value)
    except TypeError:
        raise ValueError(f"{name}={value!r} is not an integer.") from None


def _choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r}: use one of {', '.join(map(str, choices))}.")


def _finite(**values) -> None:
    for name, v in values.items():
        if v is not None and not math.isfinite(v):
            raise ValueError(f"{name} must be a finite number, not {v}.")


class Database:
    """A read-only handle on a database the explorer reads (:func:`open`)."""

    def __init__(self, url: str | None = None, *, base_url: str | None = None, **settings):
        self.settings = WebSettings(**({"db_url": url} if url else {}), **settings)
        self.url = self.settings.db_url
        self.engine = open_reader(self.url)
        self.Session = sessions(self.engine)
        self.contexts = RunContexts(self.settings)  # each run's context and page tokenizer, as the pages'
        self.cache = LockedLRU(1024)  # what the pages keep of rows that never change (app.pages.neuron)
        self.models = LocalModels()
        base = base_url if base_url is not None else os.environ.get(BASE_URL_ENV)
        self.base_url = base.rstrip("/") if base else None

    def __repr__(self) -> str:
        return f"<context_lookups.Database {self.engine.url.render_as_string(hide_password=True)}>"

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.engine.dispose()

    def view(self, slug: str, fn):
        """``fn(session, ctx)`` with the context of run ``slug`` resolved once in a new session
        (the way of a page request, docs/architecture.md)."""
        with self.Session() as s, _no_gc():
            return fn(s, self.contexts.resolve(s, slug))

    def runs(self) -> pd.DataFrame:
        """The runs, newest first: the home page twin's run fields (:func:`app.pages.views.run_card`)
        with its ``counts`` spread into columns (``neurons``, ``next_token``, ``random``, ``other``,
        ``prompts``, ``pairs``, ``kept_pairs``, ``explanations``, ``ablations``); the findings are
        :meth:`Run.findings`, the strongest pairs :meth:`Run.strongest`."""
        with self.Session() as s:
            cards = [views.run_card(s, run) for run in Q.list_runs(s)]
        rows = [{**{k: v for k, v in d.items() if k not in HOME_APART}, **d["counts"]} for d in cards]
        return frame(rows, tables="runs")

    def run(self, slug: str | None = None) -> Run:
        """The run called ``slug``; without one, the newest run (the first of :meth:`runs`).

        Raises:
            NotFound: no such run (the message names the runs there are), or no run at all.
        """
        with self.Session() as s:
            if slug is None:
                runs = Q.list_runs(s)
                if not runs:
                    raise NotFound(f"No run in {self!r}: run `lookups precompute --db ...` first.")
                slug = runs[0].slug
            return Run(self, self.contexts.resolve(s, slug).run.slug)


def open(url: str | None = None, *, base_url: str | None = None, **settings) -> Database:  # noqa: A001
    """Open the database at ``url`` read-only, the way ``lookups serve`` opens it (SQLite
    ``mode=ro``; PostgreSQL in read-only sessions). Without ``url``, the server's default:
    ``$LOOKUPS_DB_URL``, else ``sqlite:///lookups.db`` in the working directory.

    ``base_url`` (default ``$LOOKUPS_BASE_URL``): where an explorer serving this database runs
    (``http://127.0.0.1:8000``); inline displays then link to its pages. ``settings``: other
    fields of the server's settings (:class:`app.settings.WebSettings`), e.g. ``model_paths``.

    Raises:
        FileNotFoundError: the SQLite file does not exist.
        BadDatabase: not a context-lookups database, or an older schema (the message says which
            command migrates it). SchemaTooNew: written by a newer context-lookups.
        DatabaseUnavailable: the PostgreSQL server cannot be reached or refuses the login.
    """
    return Database(url, base_url=base_url, **settings)


@dataclass
class Run:
    """One run of a database: its list pages as DataFrames, its neuron and pair pages as
    objects. Each call reads the database anew (a run being written shows its new rows)."""

    db: Database
    slug: str

    def __repr__(self) -> str:
        return f"<context_lookups.Run {self.slug!r} of {self.db!r}>"

    @property
    def info(self) -> dict:
        """The run's row as the twins show it (``run`` of every page)."""
        return self.db.view(self.slug, lambda s, ctx: run_dict(ctx.run))

    def _attrs(self, flt) -> dict:
        return {"run": self.slug,
                "filter": {k: v for k, v in vars(flt).items() if k not in ("page", "per_page")}}

    # --- the list pages --------------------------------------------------------------------------
    def neurons(self, *, layer: int | None = None, kind: str = "selected", q: str | None = None,
                min_congruence: float | None = None, max_congruence: float | None = None,
                min_score: float | None = None, sort: str = "kind", order: str = "asc") -> pd.DataFrame:
        """The run's neurons matching the neuron list's filters (``/{run}/neurons``; every row,
        as its CSV twin): ``kind`` selected (next-token and random, the default), all,
        next_token, random or other; ``q`` a part of the token's text; ``sort`` kind (each kind
        by congruence), congruence, best_score, max_act, layer, neuron or token.

        Raises:
            ValueError: an unknown kind, sort or order, or a bound that is not finite.
            NotFound: ``layer`` is not a scanned layer of the run.
        """
        layer = integer("layer", layer, optional=True)
        _choice("kind", kind, Q.KINDS)
        _choice("sort", sort, tuple(Q.SORTS))
        _choice("order", order, ("asc", "desc"))
        _finite(min_congruence=min_congruence, max_congruence=max_congruence, min_score=min_score)
        flt = Q.NeuronFilter(layer=layer, kind=kind, q=q or None, min_congruence=min_congruence,
                             max_congruence=max_congruence, min_score=min_score, sort=sort, order=order,
                             page=1, per_page=ALL)
        data = self.db.view(self.slug, lambda s, ctx: views.neurons(s, ctx, flt=flt,
                                                                    default_per_page=self.db.settings.page_size))
        return frame(data["neurons"], tables="neurons", total=data["total"], **self._attrs(flt))

    def pairs(self, *, layer: int | None = None, kind: str = "selected", kept: bool = True,
              explainer: str | None = None, min_score: float | None = None, min_n: int | None = None,
              sort: str = "score") -> pd.DataFrame:
        """The run's (neuron, head) pairs matching the pair list's filters (``/{run}/pairs``,
        every row as its CSV twin): one row per explanation, or per pair without one; ``kind``
        selected, next_token or random; ``kept`` only kept pairs (the default); ``explainer``
        only its explanations; ``min_n`` held-out prompts of the smaller class at least;
        ``sort`` score (best E first), neuron or n (largest held-out set first).

        Raises:
            ValueError: an unknown kind or sort, a bound that is not finite, or a negative min_n.
            NotFound: ``layer`` is not a scanned layer of the run.
        """
        layer, min_n = integer("layer", layer, optional=True), integer("min_n", min_n, optional=True)
        _choice("kind", kind, PAIR_KINDS)
        _choice("sort", sort, Q.PAIR_SORTS)
        _finite(min_score=min_score)
        if min_n is not None and min_n < 0:
            raise ValueError(f"min_n must be 0 or more, not {min_n}.")
        flt = Q.PairFilter(layer=layer, kind=kind, kept=kept, explainer=explainer or None,
                           min_score=min_score, min_n=min_n, sort=sort, page=1, per_page=ALL)
        data = self.db.view(self.slug, lambda s, ctx: views.pairs(s, ctx, flt=flt))
        return frame(data["pairs"], tables="pairs", total=data["total"], explainers=data["explainers"],
                     **self._attrs(flt))

    def explanations(self, *, layer: int | None = None, kind: str = "selected", kept: bool = True,
                     explainer: str | None = None, min_score: float | None = None, min_n: int | None = None,
                     sort: str = "neuron") -> pd.DataFrame:
        """The explanations of the run's pairs: the rows of :meth:`pairs` (same filters) that
        hold one, by neuron, head and explainer unless ``sort`` says otherwise. One row per
        (pair, explainer): ``pivot(index=["layer", "neuron", "head_layer", "head"],
        columns="explainer", values="score")`` puts the explainers side by side."""
        df = self.pairs(layer=layer, kind=kind, kept=kept, explainer=explainer, min_score=min_score,
                        min_n=min_n, sort=sort)
        if "explainer" not in df.columns:
            return df
        out = df[df["explainer"].notna()].reset_index(drop=True)
        out.attrs = {**df.attrs, "total": len(out)}
        return out

    def prompts(self, neuron, *, split: str = "explain", score: str = "raw") -> pd.DataFrame:
        """A neuron's trimmed max-activating prompts of ``split`` (explain or heldout), as its
        page's twin lists them (``prompts``; at most 200): ``neuron`` is ``(layer, index)`` or
        ``"L3N10"``.

        Raises:
            ValueError: a malformed neuron, split or score. NotFound: no such neuron.
        """
        layer, index = _neuron_of(neuron)
        return self.neuron(layer, index, split=split, score=score).to_frame()

    def ablations(self, *, layer: int | None = None, kind: str = "selected", kept: bool = True,
                  method: str | None = None) -> pd.DataFrame:
        """Every ablated held-out prompt of the run's pairs (paper §5.4, docs/method.md §6),
        one row per (pair, method, prompt): the pair (``layer``, ``neuron``, ``head_layer``,
        ``head``, ``label``, ``kind``), the prompt (``prompt_id``, ``prompt_rank``) and the
        fields the pair page's twin gives each held-out prompt's ablation (``method``,
        ``active``, ``act_clean``, ``act_ablated``, ``prob_clean``, ``prob_ablated``, ``drop``).
        Filters as :meth:`pairs`; ``method`` zero or mean (default both).

        Raises:
            ValueError: an unknown kind. NotFound: ``layer`` is not a scanned layer.
        """
        layer = integer("layer", layer, optional=True)
        _choice("kind", kind, PAIR_KINDS)
        flt = Q.PairFilter(layer=layer, kind=kind, kept=kept, sort="neuron", page=1, per_page=ALL)

        def read(s: Session, ctx: RunContext) -> list[dict]:
            rows, _ = Q.list_pairs(s, run=ctx.run, flt=flt)
            pairs = {p.id: (p, n) for p, n, _e in rows}  # one row per explanation: each pair once
            out = []
            for a, rank in ablation_rows(s, pair_ids=list(pairs), method=method):
                p, n = pairs[a.pair_id]
                out.append({"layer": n.layer, "neuron": n.neuron, "head_layer": p.head_layer,
                            "head": p.head, "label": head_label(p.head_layer, p.head), "kind": n.kind,
                            "prompt_id": a.prompt_id, "prompt_rank": rank, **ablation_dict(a)})
            return out

        return frame(self.db.view(self.slug, read), tables="ablations", **self._attrs(flt),
                     method=method)

    def findings(self) -> Findings:
        """The run's findings as the home page shows them (its twin's ``findings``): the verdict
        on the paper's two claims, the explanation-score table per explainer, the ablation table
        per method and the comparison of explainers."""
        def read(s: Session, ctx: RunContext) -> dict:
            return Q.findings(s, run_id=ctx.run.id)

        return Findings(self.slug, self.db.view(self.slug, read))

    def strongest(self) -> pd.DataFrame:
        """The run's strongest pairs as the home page lists them (its twin's ``strongest``: E
        interval's lower bound above 0.5, at least 5 answered distinct held-out prompts per class,
        by the lower bound; at most 5), one row per pair."""
        def read(s: Session, ctx: RunContext) -> list[dict]:
            return views.strongest_pairs(s, ctx.run, limit=views.STRONGEST)

        return frame(self.db.view(self.slug, read), tables="pairs")

    # --- the single objects --------------------------------------------------------------------------
    def neuron(self, layer: int, neuron: int, *, score: str = "raw", split: str = "explain") -> NeuronPage:
        """Neuron ``L{layer}N{neuron}`` as its page shows it (``/{run}/neurons/{layer}/{neuron}``):
        ``to_dict()`` is the page's ``.json`` twin.

        Raises:
            ValueError: a score other than raw or ln, a split other than explain or heldout.
            NotFound: no such neuron in the run.
        """
        layer, neuron = integer("layer", layer), integer("neuron", neuron)
        _choice("score", score, ("raw", "ln"))
        _choice("split", split, ("explain", "heldout"))
        data = self.db.view(self.slug, lambda s, ctx: neuron_page.neuron(
            s, ctx, layer=layer, neuron_=neuron, score=score, split=split, settings=self.db.settings,
            cache=self.db.cache))
        return NeuronPage(data, self.db.base_url)

    def pair(self, layer: int, neuron: int, head_layer: int, head: int, *, score: str = "raw") -> PairPage:
        """The (neuron, head) pair ``L{head_layer}H{head} → L{layer}N{neuron}`` as its page shows
        it: ``to_dict()`` is the page's ``.json`` twin.

        Raises:
            ValueError: a score other than raw or ln. NotFound: no such neuron or pair.
        """
        layer, neuron = integer("layer", layer), integer("neuron", neuron)
        head_layer, head = integer("head_layer", head_layer), integer("head", head)
        _choice("score", score, ("raw", "ln"))
        data = self.db.view(self.slug, lambda s, ctx: views.pair(
            s, ctx, layer=layer, neuron_=neuron, head_layer=head_layer, head=head, score=score))
        return PairPage(data, self.db.base_url)

    def kept_heads(self, layer: int, neuron: int) -> list[tuple[int, int]]:
        """The heads of the neuron's kept pairs, most driven first."""
        layer, neuron = integer("layer", layer), integer("neuron", neuron)

        def read(s: Session, ctx: RunContext):
            n = get_neuron(s, run=ctx.run, layer=layer, neuron=neuron)
            return [(p.head_layer, p.head) for p in neuron_pairs(s, neuron_id=n.id, kept_only=True)]
        return self.db.view(self.slug, read)

    # --- its model -------------------------------------------------------------------------------------
    def model_source(self) -> str:
        """Where the run's model loads from on this machine (as the server decides it)."""
        return self.db.view(self.slug, lambda s, ctx: model_source(ctx.run, self.db.settings))

    def load_model(self, *, device: str = "auto", dtype: str = "float32"):
        """The run's model from this machine's files, as the live server loads it (a local
        directory or the local Hugging Face cache; never the hub).

        Raises:
            ModelNotAvailable: its files are not on this machine (the message says why).
        """
        source = self.model_source()
        path, why = self.db.models(source)
        if why is not None:
            raise ModelNotAvailable(f"The model of run {self.slug!r} cannot be loaded here: {why}.")
        return load_model(path, device=device, dtype=dtype)

    def fire_columns(self) -> fire_page.RunIndex:
        """The run's analysed neurons as /fire's columns (read once per handle)."""
        def read(s: Session, ctx: RunContext) -> fire_page.RunIndex:
            key = ("fire-index", ctx.run.id)
            index = self.db.cache.get(key)
            if index is None:
                index = fire_page.run_index(s, ctx.run)
                self.db.cache[key] = index
            return index
        return self.db.view(self.slug, read)

    def context(self) -> RunContext:
        """The run's context as a page request resolves it (rules, tokenizer, E rule)."""
        return self.db.view(self.slug, lambda s, ctx: ctx)


def _neuron_of(neuron) -> tuple[int, int]:
    """``(layer, index)`` of ``(3, 10)`` or ``"L3N10"``.

    Raises:
        ValueError: anything else."""
    import re

    if isinstance(neuron, str):
        m = re.fullmatch(r"\s*L(\d+)N(\d+)\s*", neuron)
        if m:
            return int(m.group(1)), int(m.group(2))
    elif isinstance(neuron, (tuple, list)) and len(neuron) == 2:
        return integer("layer", neuron[0]), integer("neuron", neuron[1])
    raise ValueError(f"neuron={neuron!r}: give (layer, index) or 'L3N10'.")


# --- the single objects ---------------------------------------------------------------------------

@dataclass
class Page:
    """A page's data (its ``.json`` twin) with the page shown inline (``_repr_html_``: the page's
    own template, in a sandboxed frame with the pages' stylesheet inlined; no script)."""

    data: dict
    base_url: str | None = None
    template: str = field(default="", repr=False)

    def to_dict(self) -> dict:
        """The page's ``.json`` twin."""
        return self.data

    @property
    def url(self) -> str:
        """The page's path on the explorer (with the base URL when one is configured)."""
        return (self.base_url or "") + self.data["links"]["page"]

    def extra(self) -> dict:
        """Template-only values the route adds."""
        return {}

    def html(self) -> str:
        """The page as one self-contained HTML document (inline CSS, no script)."""
        return page_html(self.template, self.data, extra=self.extra(), base_url=self.base_url,
                         page_url=self.url if self.base_url else None)

    def _repr_html_(self) -> str:
        from .display import inline

        return inline(self.html(), title=self.title())

    def title(self) -> str:
        return ""


@dataclass
class NeuronPage(Page):
    """A neuron page (:meth:`Run.neuron`)."""

    template: str = field(default="neuron.html", repr=False)

    def __repr__(self) -> str:
        n = self.data["neuron"]
        return f"<NeuronPage L{n['layer']}N{n['neuron']} {n['token']!r} of run {self.data['run']['slug']!r}>"

    def title(self) -> str:
        n = self.data["neuron"]
        return f"L{n['layer']}N{n['neuron']}"

    def extra(self) -> dict:
        d, n = self.data, self.data["neuron"]
        slug, layer, index = d["run"]["slug"], n["layer"], n["neuron"]
        params = {"score": d["score"] if d["score"] != "raw" else None,
                  "split": d["split"] if d["split"] != "explain" else None}
        return {**urls.neuron_helpers(slug, layer, index, params),
                "pair_urls": urls.pair_urls(slug, layer, index, d["run"]["n_layers"], d["run"]["n_heads"]),
                "prompts_key": None}

    def to_frame(self) -> pd.DataFrame:
        """The neuron's prompts of the page's split (the twin's ``prompts``)."""
        n = self.data["neuron"]
        return frame(self.data["prompts"], tables="prompts", run=self.data["run"]["slug"],
                     neuron=f"L{n['layer']}N{n['neuron']}", split=self.data["split"],
                     total=self.data["n_prompts_total"])

    @property
    def pairs(self) -> pd.DataFrame:
        """The neuron's kept pairs as its page lists them (the twin's ``pairs``)."""
        return frame(self.data["pairs"], tables="pairs", run=self.data["run"]["slug"])


@dataclass
class PairPage(Page):
    """A (neuron, head) pair page (:meth:`Run.pair`)."""

    template: str = field(default="pair.html", repr=False)

    def __repr__(self) -> str:
        n = self.data["neuron"]
        return (f"<PairPage {self.data['label']} → L{n['layer']}N{n['neuron']} {n['token']!r} "
                f"of run {self.data['run']['slug']!r}>")

    @property
    def url(self) -> str:
        n, p = self.data["neuron"], self.data["pair"]
        return (self.base_url or "") + urls.pair(self.data["run"]["slug"], n["layer"], n["neuron"],
                                                 p["head_layer"], p["head"])

    def title(self) -> str:
        return self.data["label"]

    def to_frame(self) -> pd.DataFrame:
        """The pair page's prompts: its twin's ``active``, ``inactive`` and ``heldout`` rows, each
        with ``group`` naming the list it comes from (first column)."""
        rows = [{"group": g, **r} for g in ("active", "inactive", "heldout") for r in self.data[g]]
        n = self.data["neuron"]
        return frame(rows, tables="prompts", run=self.data["run"]["slug"], pair=self.data["label"],
                     neuron=f"L{n['layer']}N{n['neuron']}", score=self.data["score"])


@dataclass
class Findings:
    """A run's findings (the home page twin's ``findings`` of the run): ``to_dict()``; the
    verdict (:attr:`verdict`), the score table (:meth:`scores`) and the ablation table
    (:meth:`ablation`) as DataFrames."""

    slug: str
    data: dict

    def to_dict(self) -> dict:
        return self.data

    @property
    def verdict(self) -> dict:
        """The verdict on the paper's two claims (docs/method.md §8)."""
        return self.data["verdict"]

    def scores(self) -> pd.DataFrame:
        """The paper's Table 3 per explainer: one row per (explainer, kind) with the score table's
        fields (``scores``: the sorted E values; ``authors_rule``: the same by the authors' rule)."""
        rows = [{"explainer": ex, "kind": kind, **row} for ex, t in self.data["explanations"].items()
                for kind, row in t["kinds"].items()]
        return frame(rows, tables="pairs", run=self.slug)

    def ablation(self) -> pd.DataFrame:
        """The ablation table per method: one row per (method, kind) with its fields (``active``,
        ``inactive``: n, mean and median drop; ``ks``; ``authors``: the authors' statistic)."""
        rows = [{"method": m, "kind": kind, **t[kind]} for m, t in self.data["ablation"].items()
                for kind in ("next_token", "random") if t.get(kind)]
        return frame(rows, tables="ablations", run=self.slug)

    def comparisons(self) -> pd.DataFrame:
        """Each other explainer against the preferred one (an LLM's when there is one) on the same
        pairs: one row per comparison (``a``, ``b``, ``n_rows``, ``authors_rule``,
        ``project_rule``: the paired comparison of their E)."""
        return frame([{k: v for k, v in c.items() if k != "rows"} for c in self.data["comparisons"]],
                     tables="pairs", run=self.slug)
