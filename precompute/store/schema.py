"""SQLAlchemy 2 tables: the one description of the database.

Created only through Alembic migrations (``lookups db upgrade``; the precompute job upgrades
automatically). Plain SQLite that Datasette or the ``sqlite3`` shell can open. Every row belongs
to a run. Conventions: ``layer``/``neuron``/``head`` are 0-based; ``act`` is a post-GELU
activation; ``attr`` a residual-stream dot product; JSON columns hold lists in the order their
docstring gives.

Each table's description is its class docstring and each column's its ``doc=`` (a Pint unit,
where one applies, in ``info["unit"]``): ``lookups db metadata`` turns them into Datasette's
``metadata.json`` (:mod:`precompute.store.metadata`), so they are written once, here.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

_ESC = "\uffff"  # a Unicode noncharacter


class NulText(TypeDecorator):
    """Text that may hold NUL (a byte-level token, a document): stored as is on SQLite; on
    PostgreSQL, whose text cannot hold NUL, NUL is written as U+FFFF "0" and U+FFFF as U+FFFF
    U+FFFF, and read back exactly. The column is TEXT either way (no migration)."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None or dialect.name != "postgresql":
            return value
        return value.replace(_ESC, _ESC + _ESC).replace("\x00", _ESC + "0")

    def process_result_value(self, value, dialect):
        if value is None or dialect.name != "postgresql" or _ESC not in value:
            return value
        import re

        return re.sub(f"{_ESC}(.)", lambda m: "\x00" if m.group(1) == "0" else m.group(1), value,
                      flags=re.S)


class Base(DeclarativeBase):
    pass


# Full-text search (migration 0004_search, docs/method.md §9) lives outside these tables: on
# SQLite two FTS5 external-content indexes over prompts.text and explanations.text, kept current
# by triggers; on PostgreSQL GIN indexes on to_tsvector('english', text). Alembic's autogenerate
# leaves them alone (``include_name``).
SEARCH_TABLES = {"search_prompts": "prompts", "search_explanations": "explanations"}  # index: table
SEARCH_INDEXES = ("ix_prompts_text_search", "ix_explanations_text_search")


def include_name(name: str | None, type_: str, parent_names) -> bool:
    """Alembic ``include_name`` hook: False for the search objects (the FTS5 tables, their
    shadow tables and the PostgreSQL search indexes), which no table here describes."""
    if type_ == "table" and name and name.startswith(tuple(SEARCH_TABLES)):
        return False
    return not (type_ == "index" and name in SEARCH_INDEXES)


class Run(Base):
    """One precompute run: a model, a dataset and the settings that define the computation."""

    __tablename__ = "runs"
    id: Mapped[int] = mapped_column(primary_key=True)
    slug: Mapped[str] = mapped_column(String(100), unique=True, doc="URL name, e.g. 'embedded', 'gpt2'")
    model_name: Mapped[str] = mapped_column(Text, doc="model name or local directory it was loaded "
                                            "from ('embedded': the shipped model)")
    dataset: Mapped[str] = mapped_column(Text, doc="dataset name, file or directory scanned "
                                         "('embedded': the shipped corpus)")
    settings: Mapped[dict] = mapped_column(JSON, doc="Settings.science() of the run")
    settings_hash: Mapped[str] = mapped_column(String(32),
                                               doc="hash of settings: equal hashes mean the same computation")
    package_version: Mapped[str] = mapped_column(String(40),
                                                 doc="context-lookups version that wrote the run")
    n_layers: Mapped[int] = mapped_column(Integer, doc="transformer blocks of the model")
    n_heads: Mapped[int] = mapped_column(Integer, doc="attention heads per layer")
    d_mlp: Mapped[int] = mapped_column(Integer, doc="MLP neurons per layer")
    d_model: Mapped[int] = mapped_column(Integer, doc="residual stream width")
    n_ctx: Mapped[int] = mapped_column(Integer, doc="model context length, tokens")
    layers: Mapped[list] = mapped_column(JSON, doc="scanned (analysed) layers")
    status: Mapped[str] = mapped_column(String(20), default="running", doc="running|complete|failed")
    started_at: Mapped[datetime] = mapped_column(DateTime, doc="UTC")
    finished_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True,
                                                         doc="UTC; empty while running")
    summary: Mapped[dict | None] = mapped_column(JSON, nullable=True, doc="figures of the last run")
    provenance: Mapped[dict | None] = mapped_column(JSON, nullable=True, doc="where an imported run's data "
                                                    "came from (lookups import-paper): source repository, "
                                                    "commit, licence, files read, what was missing; empty "
                                                    "for runs computed here")
    imported_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True, doc="UTC; when "
                                                         "`lookups import-paper` wrote the run (started_at "
                                                         "and finished_at are then the authors' run dates); "
                                                         "empty for runs computed here")


class Phase(Base):
    """A unit of work of a run that is done (resumability): e.g. ``neurons``, ``scan:explain``,
    ``prompts:L3N12``, ``pairs``, ``explain:baseline:PAIR``, ``ablation:zero:PAIR``."""

    __tablename__ = "phases"
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), primary_key=True, doc="unit of work, e.g. "
                                      "'scan:explain', 'prompts:L3N12', 'ablation:zero:PAIR'")
    seconds: Mapped[float] = mapped_column(Float, default=0.0, doc="wall time of the unit of work",
                                           info={"unit": "s"})
    stats: Mapped[dict | None] = mapped_column(JSON, nullable=True,
                                               doc="figures of the unit of work (JSON)")
    finished_at: Mapped[datetime] = mapped_column(DateTime, doc="UTC")


class Neuron(Base):
    """Every neuron of every scanned layer (so any of them has a page); ``kind`` says whether it
    is a selected next-token neuron, a random baseline neuron, or neither."""

    __tablename__ = "neurons"
    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    layer: Mapped[int] = mapped_column(Integer, doc="0-based MLP layer")
    neuron: Mapped[int] = mapped_column(Integer, doc="0-based index in the layer (0..d_mlp-1)")
    kind: Mapped[str] = mapped_column(String(12), default="other", doc="next_token|random|other")
    rank: Mapped[int | None] = mapped_column(Integer, nullable=True, doc="rank by congruence in layer")
    token_id: Mapped[int | None] = mapped_column(Integer, nullable=True, doc="argmax_t W_out[l,i]·W_U[:,t]; "
                                                 "empty: not recorded (imported runs)")
    token: Mapped[str] = mapped_column(NulText, doc="text of token_id decoded alone (a partial UTF-8 "
                                       "character shows as U+FFFD)")
    congruence: Mapped[float] = mapped_column(Float, doc="W_out[l,i]·W_U[:,token_id] after weight "
                                              "processing (paper §4.1)")
    top_tokens: Mapped[list] = mapped_column(JSON, doc="[[token_id, token, congruence], ...] top 10")
    bottom_tokens: Mapped[list | None] = mapped_column(JSON, nullable=True, doc="[[token_id, token, "
                                                       "congruence], ...] the 10 most negative, lowest "
                                                       "first; empty: not recorded (runs before 0005, "
                                                       "imported runs)")
    max_act: Mapped[float | None] = mapped_column(Float, nullable=True, doc="best explain-split act")
    status: Mapped[str | None] = mapped_column(String(40), nullable=True, doc="e.g. no_activating_prompt")
    best_score: Mapped[float | None] = mapped_column(Float, nullable=True, doc="best E of its pairs")
    __table_args__ = (UniqueConstraint("run_id", "layer", "neuron"),
                      Index("ix_neurons_run_kind", "run_id", "kind", "congruence"),
                      Index("ix_neurons_run_token", "run_id", "token"))


class Document(Base):
    """A scanned document (only those in some neuron's top-k are stored)."""

    __tablename__ = "documents"
    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    split: Mapped[str] = mapped_column(String(10), doc="explain|heldout")
    idx: Mapped[int] = mapped_column(Integer, doc="index in the split")
    text: Mapped[str] = mapped_column(NulText, doc="the document's text")
    __table_args__ = (UniqueConstraint("run_id", "split", "idx"),)


class TopActivation(Base):
    """Running top-k of the scan, for every neuron of every scanned layer."""

    __tablename__ = "top_activations"
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    split: Mapped[str] = mapped_column(String(10), primary_key=True, doc="explain|heldout")
    layer: Mapped[int] = mapped_column(Integer, primary_key=True, doc="0-based MLP layer")
    neuron: Mapped[int] = mapped_column(Integer, primary_key=True, doc="0-based index in the layer")
    rank: Mapped[int] = mapped_column(Integer, primary_key=True, doc="0 = highest")
    doc_idx: Mapped[int] = mapped_column(Integer, doc="documents.idx in the split")
    act: Mapped[float] = mapped_column(Float, doc="max post-GELU activation in the document")
    position: Mapped[int] = mapped_column(Integer, doc="token position of the max (BOS = 0)")


class ActivationHistogram(Base):
    """Fixed-bin histogram of one neuron's activations (``hook_post``) over every real token
    (after BOS) of one split's scan (docs/method.md §2; bins: ``precompute.prompts.histogram``). The
    counts of a split add up to its scanned tokens; the two splits' counts add exactly."""

    __tablename__ = "activation_histograms"
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    split: Mapped[str] = mapped_column(String(10), primary_key=True, doc="explain|heldout")
    layer: Mapped[int] = mapped_column(Integer, primary_key=True, doc="0-based MLP layer")
    neuron: Mapped[int] = mapped_column(Integer, primary_key=True, doc="0-based index in the layer")
    scheme: Mapped[str] = mapped_column(String(40), doc="the bins, e.g. 'log2/4:-10:10': 4 bins per "
                                        "octave of |act| from 2^-10 to 2^10, mirrored, a central bin and "
                                        "two outer bins (precompute.prompts.histogram)")
    first_bin: Mapped[int] = mapped_column(Integer, doc="0-based bin of counts[0]")
    counts: Mapped[list] = mapped_column(JSON, doc="tokens per bin from first_bin to the last non-empty "
                                         "bin (integers)")


class Prompt(Base):
    """A trimmed max-activating prompt of a selected (next-token or random) neuron, with its
    head attributions at the last position. Distinct within a neuron and split: documents that
    trim to the same token ids are one prompt with a ``multiplicity``."""

    __tablename__ = "prompts"
    id: Mapped[int] = mapped_column(primary_key=True)
    neuron_id: Mapped[int] = mapped_column(ForeignKey("neurons.id", ondelete="CASCADE"))
    split: Mapped[str] = mapped_column(String(10), doc="explain|heldout")
    rank: Mapped[int] = mapped_column(Integer, doc="rank of its document in the scan's top-k")
    # Imported runs leave the fields below None (and token_ids/acts/attr_* empty) where the
    # authors' files do not record them.
    doc_idx: Mapped[int | None] = mapped_column(Integer, nullable=True, doc="documents.idx of its document")
    start: Mapped[int | None] = mapped_column(Integer, nullable=True,
                                              doc="prompt = [BOS] + doc_tokens_with_bos[start:end]")
    end: Mapped[int | None] = mapped_column(Integer, nullable=True,
                                            doc="exclusive; end - 1 = max-activating position")
    text: Mapped[str] = mapped_column(NulText, doc="decoded prompt (without BOS)")
    token_ids: Mapped[list] = mapped_column(JSON, doc="without BOS")
    tokens: Mapped[list] = mapped_column(JSON, doc="token strings, without BOS")
    acts: Mapped[list] = mapped_column(JSON, doc="neuron act at each token, without BOS")
    act: Mapped[float | None] = mapped_column(Float, nullable=True,
                                              doc="act at the last token of the trimmed prompt")
    doc_act: Mapped[float | None] = mapped_column(Float, nullable=True,
                                                  doc="act at the same token in the full document")
    attr_raw: Mapped[list] = mapped_column(JSON, doc="[attn_layer][head], paper's score")
    attr_ln: Mapped[list] = mapped_column(JSON, doc="[attn_layer][head], LN-aware score")
    other_ln: Mapped[dict] = mapped_column(JSON, doc="LN-aware non-head contributions")
    pre: Mapped[float | None] = mapped_column(Float, nullable=True, doc="hook_pre at the last token")
    active: Mapped[list] = mapped_column(JSON, doc="['L0H3', ...] by the run's rule (raw score); "
                                         "top-k: largest first")
    multiplicity: Mapped[int] = mapped_column(Integer, default=1, server_default="1",
                                              doc="how many of the neuron's documents of this split "
                                              "trimmed to these token ids (repeats merged into one prompt, "
                                              "docs/method.md §2); 1 for runs stored before 0007 and for "
                                              "imported runs")
    doc_idxs: Mapped[list | None] = mapped_column(JSON, nullable=True, doc="documents.idx of every "
                                                  "occurrence, in rank order (the first is doc_idx); "
                                                  "empty: not recorded (before 0007, imported runs)")
    neuron: Mapped[Neuron] = relationship()
    __table_args__ = (UniqueConstraint("neuron_id", "split", "rank"),
                      Index("ix_prompts_neuron", "neuron_id", "split", "rank"))


class Lookup(Base):
    """The context look-up of a head on one stored prompt (docs/method.md §3, "Per-source
    decomposition"): the head's raw attribution at the firing position split by source token,
    with its attention weights. Stored for every kept (neuron, head) pair on each of the
    neuron's explain and held-out prompts. Source positions ``s = 0..p``: 0 is BOS, ``s >= 1``
    the prompt's token ``s - 1`` (``prompts.tokens``), ``p`` the firing position (the last).
    The vectors are little-endian float32 bytes, one value per source position
    (``precompute.heads.lookup.decode``)."""

    __tablename__ = "lookups"
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompts.id", ondelete="CASCADE"), primary_key=True)
    head_layer: Mapped[int] = mapped_column(Integer, primary_key=True,
                                            doc="0-based layer of the attention head")
    head: Mapped[int] = mapped_column(Integer, primary_key=True, doc="0-based head index in its layer")
    contrib: Mapped[bytes] = mapped_column(LargeBinary, doc="a[p, s] · (v_s W_O[h]) · W_in[:, i] per source "
                                           "position, float32 little-endian; residual-stream units (the raw "
                                           "score's); with bias they sum to prompts.attr_raw of the head")
    attention: Mapped[bytes] = mapped_column(LargeBinary, doc="the head's attention weight a[p, s] per "
                                             "source position, float32 little-endian; sums to 1")
    bias: Mapped[float] = mapped_column(Float, doc="value-bias term (b_V[h] W_O[h]) · W_in[:, i]; 0 with "
                                        "TransformerLens' processing (fold_value_biases)")
    ln_scale: Mapped[float] = mapped_column(Float, doc="scale of the LayerNorm feeding the MLP at p: each "
                                            "term divided by it is its LN-aware share (pre-activation units)")
    prompt: Mapped[Prompt] = relationship()
    __table_args__ = ({"sqlite_with_rowid": False},)


class AttentionKnockout(Base):
    """One attention knockout of a kept pair's head on one stored prompt (docs/method.md §3,
    "Attention knockout"): head ``h``'s attention row at the firing position ``p`` with the
    ``sources`` zeroed and renormalised (Geva et al. 2023), and what that changes. Stored for every
    look-up (``lookups``): the prompt's top ``knockout_top_m`` context sources by contribution,
    one at a time, then the attention sink (BOS). Effects are knocked-out minus clean (a source
    that made the neuron fire has a negative effect); empty where the knockout is undefined (no
    attention left to renormalise)."""

    __tablename__ = "knockouts"
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompts.id", ondelete="CASCADE"), primary_key=True)
    head_layer: Mapped[int] = mapped_column(Integer, primary_key=True,
                                            doc="0-based layer of the attention head")
    head: Mapped[int] = mapped_column(Integer, primary_key=True, doc="0-based head index in its layer")
    idx: Mapped[int] = mapped_column(Integer, primary_key=True, doc="0-based order of the knockout on the "
                                     "prompt: the context sources by contribution, largest first, then "
                                     "the sink")
    sources: Mapped[list] = mapped_column(JSON, doc="source positions removed together (0 = BOS, s >= 1 the "
                                          "prompt's token s - 1), as in lookups")
    contrib: Mapped[float] = mapped_column(Float, doc="their look-up terms summed, residual-stream units "
                                           "(lookups.contrib); divided by lookups.ln_scale: pre-activation "
                                           "units")
    direct_pre: Mapped[float | None] = mapped_column(Float, nullable=True, doc="direct effect on hook_pre "
                                                     "(head -> neuron only, norm scale frozen), "
                                                     "pre-activation units")
    direct_act: Mapped[float | None] = mapped_column(Float, nullable=True, doc="direct effect on the "
                                                     "activation (hook_post)")
    total_pre: Mapped[float | None] = mapped_column(Float, nullable=True, doc="total effect on hook_pre "
                                                    "(the forward pass re-run)")
    total_act: Mapped[float | None] = mapped_column(Float, nullable=True, doc="total effect on the "
                                                    "activation (hook_post)")
    total_prob: Mapped[float | None] = mapped_column(Float, nullable=True, doc="total effect on the "
                                                     "softmax probability of the neuron's token at p")
    prob_clean: Mapped[float | None] = mapped_column(Float, nullable=True, doc="that probability, clean")
    prompt: Mapped[Prompt] = relationship()
    __table_args__ = ({"sqlite_with_rowid": False},)


class Pair(Base):
    """A (neuron, head) pair over the neuron's explain-split prompts; ``kept`` when the neuron has
    at least ``pair_min_prompts`` of them and the head is active on
    ``pair_min_fraction``..``pair_max_fraction`` of them (paper: 25%-75%)."""

    __tablename__ = "pairs"
    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    neuron_id: Mapped[int] = mapped_column(ForeignKey("neurons.id", ondelete="CASCADE"))
    head_layer: Mapped[int] = mapped_column(Integer, doc="0-based layer of the attention head")
    head: Mapped[int] = mapped_column(Integer, doc="0-based head index in its layer")
    n_prompts: Mapped[int] = mapped_column(Integer, doc="the neuron's explain prompts")
    n_active: Mapped[int] = mapped_column(Integer, doc="explain prompts on which the head is active")
    active_fraction: Mapped[float] = mapped_column(Float, doc="n_active / n_prompts")
    mean_attr_raw: Mapped[float | None] = mapped_column(Float, nullable=True, doc="mean raw head "
                                                        "attribution, residual-stream units; empty: not "
                                                        "recorded")
    mean_attr_ln: Mapped[float | None] = mapped_column(Float, nullable=True, doc="mean LN-aware head "
                                                       "attribution, pre-activation units")
    kept: Mapped[bool] = mapped_column(Boolean,
                                       doc="kept by the run's rule: at least pair_min_prompts prompts, "
                                       "active on pair_min_fraction..pair_max_fraction of them")
    neuron: Mapped[Neuron] = relationship()
    __table_args__ = (UniqueConstraint("neuron_id", "head_layer", "head"),
                      Index("ix_pairs_head", "run_id", "head_layer", "head"),
                      Index("ix_pairs_kept", "run_id", "kept"))


class LLMCall(Base):
    """Every LLM request and its response, keyed by a hash of the request (the API key is
    never part of it), so a re-run sends nothing already answered."""

    __tablename__ = "llm_calls"
    request_hash: Mapped[str] = mapped_column(String(64), primary_key=True,
                                              doc="SHA-256 of the request (the API key is never part of it)")
    request: Mapped[dict] = mapped_column(JSON, doc="the chat request (JSON)")
    response: Mapped[dict | None] = mapped_column(JSON, nullable=True, doc="the endpoint's answer (JSON)")
    status: Mapped[str] = mapped_column(String(20), doc="ok|failed")
    error: Mapped[str | None] = mapped_column(Text, nullable=True, doc="why it failed")
    created_at: Mapped[datetime] = mapped_column(DateTime, doc="UTC")


class Explanation(Base):
    """An explanation of when a head is active for a neuron, and its explanation score
    ``E = ½(TPR + TNR)`` on held-out prompts (paper §4.4)."""

    __tablename__ = "explanations"
    id: Mapped[int] = mapped_column(primary_key=True)
    pair_id: Mapped[int] = mapped_column(ForeignKey("pairs.id", ondelete="CASCADE"))
    explainer: Mapped[str] = mapped_column(String(100), doc="'baseline' or 'openai:<model>'")
    status: Mapped[str] = mapped_column(String(20),
                                        doc="ok|failed|single_class|unanswered (ok may have score None: "
                                        "undefined E; unanswered: an imported explanation without held-out "
                                        "answers in the data)")
    text: Mapped[str | None] = mapped_column(NulText, nullable=True, doc="the explanation")
    prompt: Mapped[str | None] = mapped_column(NulText, nullable=True, doc="the request shown to it")
    settings: Mapped[dict | None] = mapped_column(JSON, nullable=True, doc="explainer settings (JSON)")
    score: Mapped[float | None] = mapped_column(Float, nullable=True, doc="E, None if single class")
    tpr: Mapped[float | None] = mapped_column(Float, nullable=True,
                                              doc="TP/(TP+FN) on the held-out prompts")
    tnr: Mapped[float | None] = mapped_column(Float, nullable=True,
                                              doc="TN/(TN+FP) on the held-out prompts")
    n_pos: Mapped[int] = mapped_column(Integer, default=0,
                                       doc="held-out prompts on which the head is active")
    n_neg: Mapped[int] = mapped_column(Integer, default=0, doc="held-out prompts on which it is not")
    n_unparsed: Mapped[int] = mapped_column(Integer, default=0, doc="answers other than Yes/No")
    error: Mapped[str | None] = mapped_column(Text, nullable=True, doc="why it failed or E is undefined")
    created_at: Mapped[datetime] = mapped_column(DateTime, doc="UTC")
    pair: Mapped[Pair] = relationship()
    __table_args__ = (UniqueConstraint("pair_id", "explainer"),)


class Classification(Base):
    """The classifier's answer on one held-out prompt for one explanation."""

    __tablename__ = "classifications"
    explanation_id: Mapped[int] = mapped_column(ForeignKey("explanations.id", ondelete="CASCADE"),
                                                primary_key=True)
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompts.id", ondelete="CASCADE"),
                                           primary_key=True)
    truth: Mapped[bool] = mapped_column(Boolean, doc="head active on the prompt")
    answer: Mapped[str] = mapped_column(NulText, doc="raw answer")
    predicted: Mapped[bool | None] = mapped_column(Boolean, nullable=True, doc="None: not Yes/No")


class Ablation(Base):
    """One held-out prompt of a pair with the pair's head ablated (paper §5.4)."""

    __tablename__ = "ablations"
    pair_id: Mapped[int] = mapped_column(ForeignKey("pairs.id", ondelete="CASCADE"), primary_key=True)
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompts.id", ondelete="CASCADE"),
                                           primary_key=True)
    method: Mapped[str] = mapped_column(String(10), primary_key=True, doc="zero|mean")
    active: Mapped[bool] = mapped_column(Boolean, doc="head active on the prompt (the run's rule)")
    act_clean: Mapped[float | None] = mapped_column(Float, nullable=True,
                                                    doc="neuron post-GELU activation at the last token, "
                                                    "clean; empty: not recorded (imported runs)")
    act_ablated: Mapped[float | None] = mapped_column(Float, nullable=True,
                                                      doc="the same with the head ablated")
    prob_clean: Mapped[float] = mapped_column(Float, doc="softmax prob of the neuron's token")
    prob_ablated: Mapped[float] = mapped_column(Float,
                                                doc="the same, head ablated")
    drop: Mapped[float] = mapped_column(Float, doc="prob_clean - prob_ablated")
    n_records: Mapped[int] = mapped_column(Integer, default=1, server_default="1",
                                           doc="how many of the source's held-out records had this "
                                           "prompt text (imported runs: the authors' per-pair means count "
                                           "each); 1 for runs computed here")
