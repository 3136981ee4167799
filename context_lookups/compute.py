"""Computation on a model from Python: :func:`load_model`, then :func:`lookup` (a neuron on a
prompt: its activation, the head attribution, and a head's context look-up with its attention
sink and knockouts) and :func:`fire` (which analysed neurons fire on a text).

Nothing here computes the science: a look-up is the live page's pass
(:func:`app.live.passes.live_views` through :func:`app.live.passes.serve_batch`, the one loop
that tokenizes, checks and batches live prompts), the sink is
:func:`precompute.heads.lookup.split_sink` and the knockout :meth:`precompute.model.Backend.knockout`;
``fire`` is the /fire page's pass (:func:`app.live.fire.run_fire_batch`) and its result as the
page shows it (:func:`app.pages.fire.shown`). The results hold the pass's values as tensors
(jaxtyping shapes, TransformerLens dimension names) with ``to_frame()`` and ``to_dict()`` (the
page's JSON), and show themselves inline with the page's own template.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from context_lookups.app.live.fire import OVERALL, PER_POSITION, FireColumns, FireJob, run_fire_batch
from context_lookups.app.live.passes import Target, check_head, check_ids, live_views, serve_batch, token_str
from context_lookups.app.pages import fire as fire_page
from context_lookups.app.pages import urls
from context_lookups.app.pages.neuron import live_extra, live_request, shown_live
from context_lookups.app.settings import WebSettings
from context_lookups.precompute.core.errors import BadLiveInput
from context_lookups.precompute.core.settings import EMBEDDED_MODEL, Settings
from context_lookups.precompute.core.tokens import partial_tokens
from context_lookups.precompute.heads.attribution import head_label, parse_heads
from context_lookups.precompute.heads.lookup import BOS_LABEL, SinkSplit, split_sink
from context_lookups.precompute.model import Knockout, LoadedModel, check_neuron
from context_lookups.precompute.model import load_model as load_backend
from context_lookups.precompute.neurons.congruence import congruence

from . import columns as C
from .display import inline, page_html
from .stored import integer

_WEB = WebSettings.model_fields
MAX_BATCH_TOKENS = _WEB["max_batch_tokens"].default  # the live server's defaults
MAX_BATCH = _WEB["max_batch"].default
NO_SERVER_CAP = 1 << 30  # from Python, a prompt is limited by the model's context alone


def load_model(name_or_dir: str | None = None, *, device: str = "auto", dtype: str | torch.dtype = "float32",
               backend: str = "auto") -> LoadedModel:
    """Load a model as the precompute job and the live server do (:func:`precompute.model.load_model`):
    ``name_or_dir`` a local Hugging Face directory or a TransformerLens / Hugging Face name
    (default: the embedded model); ``device`` auto (cuda, else mps, else cpu) or a torch device;
    ``dtype`` float32, bfloat16 or float16; ``backend`` auto, fast or bridge.

    Raises:
        ModelNotAvailable: not a loadable directory, or a name the hub cannot provide here.
        ModelNotSupported: an architecture no backend runs. BadSettings: an unknown device,
            dtype or backend.
    """
    return load_backend(name_or_dir or EMBEDDED_MODEL, device=device, dtype=dtype, backend=backend)


_PARTIAL: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _partial(model: LoadedModel) -> dict[int, bytes]:
    """The model's partial UTF-8 tokens (how its tokens are shown), computed once per model."""
    got = _PARTIAL.get(model.tokenizer)
    if got is None:
        got = _PARTIAL[model.tokenizer] = partial_tokens(model.tokenizer)
    return got


@dataclass(eq=False)
class _Job:
    """A prompt on its way through :func:`serve_batch` (the live server's job, without a queue)."""

    prompt: str
    pos: int | None
    ids: list[int] = field(default_factory=list)
    future: Future = field(default_factory=Future)


def _settle_future(future: Future, *, result=None, error=None) -> None:
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def _settle(job, *, result=None, error=None) -> None:
    _settle_future(job.future, result=result, error=error)


def _labels(heads) -> list[str]:
    """``["L1H3", ...]`` of heads given as ``(1, 3)`` or ``"L1H3"``."""
    if heads is None:
        return []
    one = isinstance(heads, tuple) and len(heads) == 2 and not isinstance(heads[0], (tuple, str))
    if isinstance(heads, str) or one:
        heads = [heads]
    return [h if isinstance(h, str) else head_label(integer("head layer", h[0]), integer("head", h[1]))
            for h in heads]


@dataclass
class _Neuron:
    """What a look-up needs of its neuron: the live target, the heads, how tokens are shown."""

    target: Target
    ablate: list[tuple[int, int]]
    head: tuple[int, int] | None
    partial: dict
    max_act: float | None
    run: str | None
    base_url: str | None = None


def _of_run(model: LoadedModel, run, layer: int, neuron: int, head, ablate) -> _Neuron:
    """The neuron as the live page takes it from its run (``app.pages.neuron.live_request``):
    its stored token, the run's rules, the heads checked against the run."""
    def read(s, ctx):
        r = ctx.run
        if (r.n_layers, r.n_heads, r.d_mlp) != (model.n_layers, model.n_heads, model.d_mlp):
            raise ValueError(f"Run {ctx.slug!r} was computed on a model with {r.n_layers} layers, "
                             f"{r.n_heads} heads and d_mlp {r.d_mlp}, not this one ({model.name}): load "
                             f"its model with run.load_model().")
        picked = _labels(head)
        if len(picked) > 1:
            raise ValueError(f"head={head!r} names {len(picked)} heads: give one, e.g. (1, 3).")
        req = live_request(s, ctx, layer=layer, neuron_=neuron, prompt="", ablate=_labels(ablate), pos=None,
                           head=picked[0] if picked else None)
        n = req["neuron"]
        return _Neuron(Target(ctx.slug, n.layer, n.neuron, n.token_id, n.token, ctx.rules), req["ablate"],
                       req["head"], ctx.partial, n.max_act, ctx.slug, run.db.base_url)

    return run.db.view(run.slug, read)


def _of_model(model: LoadedModel, layer: int, neuron: int, head, ablate, token) -> _Neuron:
    """The neuron of ``model`` alone: its token given, else its most congruent one (docs/method.md
    §1); the rules of a new run (the paper's defaults)."""
    check_neuron(layer, neuron, n_layers=model.n_layers, d_mlp=model.d_mlp)
    if token is None:
        token = int(congruence(model.backend.W_out(layer)[neuron:neuron + 1].float(),
                               model.backend.W_U().float()).argmax())
    elif isinstance(token, str):
        ids = model.encode(token)
        if len(ids) != 1:
            raise ValueError(f"token={token!r} is {len(ids)} tokens of this model: give one token "
                             f"(or its id).")
        token = ids[0]
    elif not 0 <= int(token) < model.d_vocab:
        raise ValueError(f"token={token} is outside the vocabulary (0..{model.d_vocab - 1}).")
    token = int(token)
    heads = parse_heads(",".join(_labels(ablate)), n_layers=model.n_layers, n_heads=model.n_heads)
    picked = parse_heads(",".join(_labels(head)), n_layers=model.n_layers, n_heads=model.n_heads)
    if len(picked) > 1:
        raise ValueError(f"head={head!r} names {len(picked)} heads: give one, e.g. (1, 3).")
    target = Target("", layer, neuron, token, token_str(model.tokenizer, token), Settings.of_run(None))
    return _Neuron(target, heads, picked[0] if picked else None, _partial(model), None, None)


def lookup(model: LoadedModel, prompt: str | Sequence[str], *, layer: int, neuron: int,
           position: int | None = None, head: tuple[int, int] | str | None = None, ablate: Sequence = (),
           token: int | str | None = None, run=None, knockout: bool = False) -> Lookup | list[Lookup]:
    """Neuron ``L{layer}N{neuron}`` on ``prompt``: the live page's pass (paper §4.3; docs/method.md §3).

    Args:
        prompt: a text, or a list of texts (run in length-sorted batches as the live server does).
        position: the position read at, 0-based among the prompt's tokens (BOS excluded); default
            each prompt's last token.
        head: ``(layer, head)`` or ``"L1H3"``: its per-source look-up at ``position``.
        ablate: heads to zero-ablate in a second pass (paper §5.4), as on the page.
        token: the neuron's token (its id or text); default the run's stored token, else its
            most congruent token (docs/method.md §1).
        run: a :class:`~context_lookups.stored.Run` computed on this model: the neuron's token,
            the run's rules (active heads, heads scored) and its checks, as the live page takes
            them (``to_dict()`` is then the page twin's ``live``). Without it, the paper's
            default rules.
        knockout: also knock out the head's top context sources and the sink
            (:meth:`precompute.model.Backend.knockout`; docs/method.md §3), one more pass.

    Returns:
        A :class:`Lookup` (a list of them for a list of prompts).

    Raises:
        BadLiveInput: an empty prompt, a position outside it, a head not upstream of the neuron, a
            malformed head. PromptTooLong: more tokens than the model's context (minus BOS).
        ValueError: a neuron, token or head outside the model; a run of another model.
        NotFound: the run has no such neuron.
    """
    layer, neuron = integer("layer", layer), integer("neuron", neuron)
    position = integer("position", position, optional=True)
    single = isinstance(prompt, str)
    prompts = [prompt] if single else list(prompt)
    for p in prompts:
        if not p or not p.strip():
            raise BadLiveInput("The prompt is empty: type some text to run the model on.")
    nr = _of_run(model, run, layer, neuron, head, ablate) if run is not None else \
        _of_model(model, layer, neuron, head, ablate, token)
    t, cap = nr.target, model.n_ctx - 1
    jobs = [_Job(p, position) for p in prompts]

    def compute(batch: list[_Job]) -> list[dict]:
        outs = live_views(model, [[model.bos_token_id] + j.ids for j in batch],
                          [len(j.ids) - 1 if j.pos is None else j.pos for j in batch], [t] * len(batch),
                          [tuple(nr.ablate)] * len(batch), [nr.head] * len(batch))
        for j, out in zip(batch, outs, strict=True):
            out["prompt"] = j.prompt
        return outs

    serve_batch(model, jobs, check=lambda j, ids: check_ids(ids, j.pos, cap, NO_SERVER_CAP)
                or check_head(model, nr.head, t), compute=compute, settle=_settle,
                max_tokens=MAX_BATCH_TOKENS, max_rows=MAX_BATCH)
    views = [j.future.result() for j in jobs]  # raises the first prompt's error
    kos: list = [None] * len(jobs)
    if knockout and nr.head is not None:
        kos = model.backend.knockout([[model.bos_token_id] + j.ids for j in jobs],
                                     [(t.layer, t.neuron, t.token_id)] * len(jobs), [nr.head] * len(jobs),
                                     positions=[v["pos"] + 1 for v in views])
    out = [Lookup.of(shown_live(v, nr.partial), nr, ko) for v, ko in zip(views, kos, strict=True)]
    return out[0] if single else out


@dataclass
class Lookup:
    """A neuron on one prompt, from the live page's pass (docs/method.md §3). Positions are
    0-based among the prompt's tokens (BOS excluded); the look-up's sources ``s = 0..position +
    1`` put BOS at 0 and token ``s - 1`` at ``s``.

    ``acts``: the neuron's activation (``hook_post``) at every token; ``act``, ``pre``: at
    ``position``; ``prob``: the neuron's token's next-token probability there; ``top5``:
    ``(id, text, probability)``. ``attr_raw`` / ``attr_ln``: every upstream head's attribution
    (residual-stream / pre-activation units), the first ``n_scored`` layers scored by the run's
    rule, ``active`` the active heads. With ``head``: ``contrib`` (raw units) / ``contrib_ln``
    (pre-activation units) and ``attention`` per source, ``bias`` / ``bias_ln``, ``total`` /
    ``total_ln`` (= the head's attribution: ``contrib.sum() + bias``), ``ln_scale``; ``sink``:
    the sink (BOS) set apart from the context sources (raw units); ``knockout``: its knockouts,
    when asked for. ``ablation``: the ablated pass as the page's twin gives it (None without
    ``ablate``)."""

    prompt: str
    tokens: list[str]
    token_ids: Int[Tensor, " pos"]
    layer: int
    neuron: int
    position: int
    token_id: int
    token: str
    acts: Float[Tensor, " pos"]
    act: float
    pre: float
    prob: float
    attr_raw: Float[Tensor, "n_layers n_heads"]
    attr_ln: Float[Tensor, "n_layers n_heads"]
    n_scored: int
    active: list[str]
    top5: list[tuple[int, str, float]]
    head: tuple[int, int] | None = None
    contrib: Float[Tensor, " key_pos"] | None = None
    contrib_ln: Float[Tensor, " key_pos"] | None = None
    attention: Float[Tensor, " key_pos"] | None = None
    bias: float | None = None
    bias_ln: float | None = None
    total: float | None = None
    total_ln: float | None = None
    ln_scale: float | None = None
    sink: SinkSplit | None = None
    knockout: Knockout | None = None
    ablation: dict | None = None
    run: str | None = None
    max_act: float | None = field(default=None, repr=False)
    view: dict = field(default_factory=dict, repr=False)
    base_url: str | None = field(default=None, repr=False)

    @classmethod
    def of(cls, v: dict, nr: _Neuron, ko: Knockout | None = None) -> Lookup:
        """From a live view as the page shows it (``shown_live``)."""
        lk = v.get("lookup")
        head = nr.head if lk else None
        f32 = torch.float32
        extra = {}
        if lk:
            extra = dict(contrib=torch.tensor(lk["contrib"], dtype=f32),
                         contrib_ln=torch.tensor(lk["contrib_ln"], dtype=f32),
                         attention=torch.tensor(lk["attention"], dtype=f32), bias=lk["bias"],
                         bias_ln=lk["bias_ln"],
                         total=lk["total"], total_ln=lk["total_ln"], ln_scale=lk["ln_scale"],
                         sink=split_sink(lk["contrib"], lk["attention"]))
        return cls(prompt=v["prompt"], tokens=list(v["tokens"]), token_ids=torch.tensor(v["token_ids"]),
                   layer=nr.target.layer, neuron=nr.target.neuron, position=v["pos"], token_id=v["token_id"],
                   token=v["token"], acts=torch.tensor(v["acts"], dtype=f32), act=v["act"], pre=v["pre"],
                   prob=v["prob"], attr_raw=torch.tensor(v["attr_raw"], dtype=f32),
                   attr_ln=torch.tensor(v["attr_ln"], dtype=f32), n_scored=v["n_scored"],
                   active=list(v["active"]),
                   top5=[tuple(x) for x in v["top5"]], head=head, knockout=ko, ablation=v.get("ablation"),
                   run=nr.run, max_act=nr.max_act, view=v, base_url=nr.base_url, **extra)

    def __repr__(self) -> str:
        look = ""
        if self.head is not None:
            top = self.sink.positions[0] if self.sink.positions else None
            look = (f", head=L{self.head[0]}H{self.head[1]} total={self.total:.4g}"
                    + (f" top source #{top - 1} {self.tokens[top - 1]!r}" if top else ""))
        return (f"<Lookup L{self.layer}N{self.neuron} ({self.token!r}) at #{self.position} "
                f"{self.tokens[self.position]!r}: act={self.act:.4g} prob={self.prob:.4g}{look}"
                f"{', knockout' if self.knockout is not None else ''} of {len(self.tokens)} tokens>")

    def to_dict(self) -> dict:
        """The live pass as the neuron page's twin gives it (``live`` of
        ``/{run}/neurons/{layer}/{neuron}.json?prompt=...``); the sink is :attr:`sink`
        (``as_dict()``) and the knockout :attr:`knockout` (``as_dict()``)."""
        return self.view

    def to_frame(self, what: str | None = None) -> pd.DataFrame:
        """A table of the look-up: ``what="sources"`` (the default with a head) one row per
        source (``source``, ``token``, ``contrib``, ``contrib_ln``, ``attention``, ``sink``; with
        the knockout, the effects of knocking out each single source: ``ko_total_act``,
        ``ko_direct_act``, ``ko_total_prob``), ``"heads"`` (the default without) one row per
        upstream head (``layer``, ``head``, ``label``, ``attr_raw``, ``attr_ln``, ``scored``,
        ``active``), ``"tokens"`` one row per token (``position``, ``token``, ``token_id``, ``act``).

        Raises:
            ValueError: another ``what``, or ``"sources"`` without a head.
        """
        what = what or ("sources" if self.head is not None else "heads")
        attrs = {"run": self.run, "neuron": f"L{self.layer}N{self.neuron}", "position": self.position}
        if what == "heads":
            active = set(self.active)
            rows = [{"layer": k, "head": h, "label": head_label(k, h), "attr_raw": float(self.attr_raw[k, h]),
                     "attr_ln": float(self.attr_ln[k, h]), "scored": k < self.n_scored,
                     "active": head_label(k, h) in active}
                    for k in range(self.attr_raw.shape[0]) for h in range(self.attr_raw.shape[1])]
        elif what == "tokens":
            rows = [{"position": i, "token": t, "token_id": int(self.token_ids[i]),
                     "act": float(self.acts[i])} for i, t in enumerate(self.tokens)]
        elif what == "sources":
            if self.head is None:
                raise ValueError("No look-up: run lookup(..., head=(layer, head)) for one.")
            rows = [{"source": s, "token": BOS_LABEL if s == 0 else self.tokens[s - 1],
                     "contrib": float(self.contrib[s]), "contrib_ln": float(self.contrib_ln[s]),
                     "attention": float(self.attention[s]), "sink": s in self.sink.sink}
                    for s in range(len(self.contrib))]
            if self.knockout is not None:
                ko = self.knockout
                for j, g in enumerate(ko.sources):
                    if len(g) == 1:
                        rows[g[0]].update(ko_total_act=_f(ko.total_act, j),
                                          ko_direct_act=float(ko.direct_act[j]),
                                          ko_total_prob=_f(ko.total_prob, j))
            attrs["head"] = head_label(*self.head)
        else:
            raise ValueError(f"what={what!r}: use sources, heads or tokens.")
        df = pd.DataFrame(rows)
        df.attrs.update(attrs, units={**C.units(df.columns), **{
            c: u for c, u in (("contrib", C.RAW), ("contrib_ln", C.LN),
                              ("attention", "attention weight (0..1)"), ("ko_total_act", C.ACT),
                              ("ko_direct_act", C.ACT), ("ko_total_prob", "probability"))
            if c in df.columns}})
        return df

    def html(self, score: str = "raw") -> str:
        """The live panel of the neuron page (``_live.html``) with this pass, and the look-up's
        sink and knockouts, as one self-contained document."""
        if score not in ("raw", "ln"):
            raise ValueError(f"score={score!r}: use raw or ln.")
        data = {"live": self.view, "live_error": None, "live_pos": self.position, "score": score,
                "run": {"slug": self.run, "n_heads": self.attr_raw.shape[1]},
                "neuron": {"layer": self.layer, "neuron": self.neuron, "max_act": self.max_act}}
        extra = live_extra(self.view, data, score)
        if self.head is not None:
            c = self.contrib_ln if score == "ln" else self.contrib
            extra["sink"] = split_sink(c.tolist(), self.attention.tolist()).as_dict()
            if self.knockout is not None:
                extra["knockout"] = _knockout_rows(self.knockout)
        page = None
        if self.base_url and self.run:
            page = self.base_url + urls.neuron(self.run, self.layer, self.neuron, prompt=self.prompt,
                                               ablate=(self.ablation or {}).get("heads"), pos=self.position,
                                               head=head_label(*self.head) if self.head else None,
                                               score=score if score != "raw" else None)
        return page_html("notebook_lookup.html", data, extra=extra, base_url=self.base_url, page_url=page)

    def _repr_html_(self) -> str:
        return inline(self.html(), title=f"L{self.layer}N{self.neuron} on a prompt", height=720)


def _f(t: Tensor | None, j: int) -> float | None:
    return None if t is None else float(t[j])


def _knockout_rows(ko: Knockout) -> dict:
    """The knockout as the inline view lists it: by single source, and the sink's."""
    by = {}
    sink = None
    for j, g in enumerate(ko.sources):
        row = {"total_act": _f(ko.total_act, j), "direct_act": float(ko.direct_act[j])}
        if tuple(g) == (0,):
            sink = row
        elif len(g) == 1:
            by[g[0]] = row
    return {"act": ko.act, "renormalise": ko.renormalise, "by_source": by, "sink": sink}


# --- which neurons fire ----------------------------------------------------------------------------

def fire(model: LoadedModel, text: str, *, run=None) -> Fire:
    """Which of a run's analysed neurons fire on ``text``, relative to their own maxima: the
    /fire page's pass and its result (docs/method.md §11). ``run``: a
    :class:`~context_lookups.stored.Run` computed on this model; default the run the /fire page
    picks in the server's default database (``$LOOKUPS_DB_URL``, else ``sqlite:///lookups.db``):
    the first whose model is on this machine.

    Raises:
        BadLiveInput: an empty text. PromptTooLong: more tokens than the model's context.
        ValueError: the run was computed on another model. NotFound: no run in the database.
    """
    if not text or not text.strip():
        raise BadLiveInput("The text is empty: type some text to run the model on.")
    if run is None:
        run = _fire_run()
    info = run.info
    if (info["n_layers"], info["n_heads"], info["d_mlp"]) != (model.n_layers, model.n_heads, model.d_mlp):
        raise ValueError(f"Run {run.slug!r} was computed on another model than {model.name}: pass run= a run "
                         f"of this model, or load the run's own with run.load_model().")
    index = run.fire_columns()
    columns = FireColumns(index.slug, index.layers, index.d_mlp, index.max_act)
    job = FireJob(id=0, source=model.name, prompt=text, columns=columns)
    done: Future = Future()
    cap = model.n_ctx - 1
    run_fire_batch(model, [job], check_ids=lambda ids: check_ids(ids, None, cap, NO_SERVER_CAP),
                   settle=lambda _job, **res: _settle_future(done, **res),
                   max_batch_tokens=MAX_BATCH_TOKENS, max_batch=MAX_BATCH)
    shown = fire_page.shown(done.result(), index, run.context().partial)
    return Fire.of(shown, run.slug, info, run.db.base_url)


def _fire_run():
    """The run /fire shows by default in the server's default database."""
    from context_lookups.app.pages import queries as Q

    from .stored import Run, open

    db = open()
    with db.Session() as s:
        picked = fire_page.pick_run(Q.list_runs(s), db.contexts.model_notice, None)
    if picked is None:
        from context_lookups.precompute.core.errors import NotFound

        raise NotFound(f"No run in {db!r} to read the neurons' maxima from: pass run=.")
    return Run(db, picked.slug)


@dataclass
class Fire:
    """Which analysed neurons fire on a text (docs/method.md §11). ``peak``: per token, the
    largest relative activation of any analysed neuron (activation ÷ the neuron's maximum over
    the run's explain documents; NaN where none is listed); ``neurons``: the ``overall`` neurons
    with the largest peak (labels ``L{layer}N{neuron}``), ``rel``: their relative activation at
    every token."""

    text: str
    tokens: list[str]
    token_ids: Int[Tensor, " pos"]
    peak: Float[Tensor, " pos"]
    neurons: list[str]
    rel: Float[Tensor, "neuron pos"]
    run: str
    view: dict = field(default_factory=dict, repr=False)
    info: dict = field(default_factory=dict, repr=False)
    base_url: str | None = field(default=None, repr=False)

    @classmethod
    def of(cls, shown: dict, slug: str, info: dict, base_url: str | None) -> Fire:
        nan = float("nan")
        n = shown["n_tokens"]
        return cls(text=shown["prompt"], tokens=list(shown["tokens"]),
                   token_ids=torch.tensor(shown["token_ids"]),
                   peak=torch.tensor([nan if p is None else p for p in shown["peak"]], dtype=torch.float32),
                   neurons=[o["label"] for o in shown["overall"]],
                   rel=torch.tensor([o["rels"] for o in shown["overall"]],
                                    dtype=torch.float32).reshape(-1, n),
                   run=slug, view=shown, info=info, base_url=base_url)

    def __repr__(self) -> str:
        top = ", ".join(self.neurons[:5])
        return f"<Fire of run {self.run!r} on {len(self.tokens)} tokens: strongest {top}>"

    def to_dict(self) -> dict:
        """The /fire page twin's ``result``."""
        return self.view

    def to_frame(self) -> pd.DataFrame:
        """The neurons with the largest relative activation anywhere in the text (the twin's
        ``overall``: ``label``, ``layer``, ``neuron``, ``kind``, ``token``, ``rel``, ``act``,
        ``pos`` where it peaks, ``rels`` at every token)."""
        df = pd.DataFrame.from_records(self.view["overall"])
        rel = "activation ÷ the neuron's explain maximum"
        df.attrs.update(run=self.run, units={"rel": rel, "act": C.ACT, "rels": rel})
        return df

    def html(self) -> str:
        """The /fire page with this result, as one self-contained document."""
        params = {"run": self.run, "text": self.text}
        data = {"runs": [{"slug": self.run, "model_name": self.info.get("model_name"), "live": True}],
                "run": self.info, "text": self.text, "notice": None, "per_position": PER_POSITION,
                "overall": OVERALL, "result": self.view, "error": None,
                "links": {"page": urls.fire(**params), "json": urls.fire(fmt="json", **params)}}
        return page_html("fire.html", data, base_url=self.base_url,
                         page_url=self.base_url + urls.fire(**params) if self.base_url else None)

    def _repr_html_(self) -> str:
        return inline(self.html(), title="which neurons fire")
