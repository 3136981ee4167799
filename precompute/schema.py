"""SQLAlchemy 2 tables: the one description of the database.

Created only through Alembic migrations (``lookups db upgrade``; the precompute job upgrades
automatically). Plain SQLite that Datasette or the ``sqlite3`` shell can open. Every row belongs
to a run. Conventions: ``layer``/``neuron``/``head`` are 0-based; ``act`` is a post-GELU
activation; ``attr`` a residual-stream dot product; JSON columns hold lists in the order their
docstring gives.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (JSON, Boolean, DateTime, Float, ForeignKey, Index, Integer, String, Text,
                        UniqueConstraint)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class Base(DeclarativeBase):
    pass


class Run(Base):
    """One precompute run: a model, a dataset and the settings that define the computation."""

    __tablename__ = "runs"
    id: Mapped[int] = mapped_column(primary_key=True)
    slug: Mapped[str] = mapped_column(String(100), unique=True)  # URL name, e.g. "embedded", "gpt2"
    model_name: Mapped[str] = mapped_column(Text)
    dataset: Mapped[str] = mapped_column(Text)
    settings: Mapped[dict] = mapped_column(JSON)  # Settings.science() of the run
    settings_hash: Mapped[str] = mapped_column(String(32))
    package_version: Mapped[str] = mapped_column(String(40))
    n_layers: Mapped[int] = mapped_column(Integer)
    n_heads: Mapped[int] = mapped_column(Integer)
    d_mlp: Mapped[int] = mapped_column(Integer)
    d_model: Mapped[int] = mapped_column(Integer)
    n_ctx: Mapped[int] = mapped_column(Integer)
    layers: Mapped[list] = mapped_column(JSON)  # scanned (analysed) layers
    status: Mapped[str] = mapped_column(String(20), default="running")  # running|complete|failed
    started_at: Mapped[datetime] = mapped_column(DateTime)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    summary: Mapped[dict | None] = mapped_column(JSON, nullable=True)  # figures of the last run
    # Where an imported run's data came from (``lookups import-paper``): source repository,
    # commit, licence, files read, what was missing. None for runs computed here.
    provenance: Mapped[dict | None] = mapped_column(JSON, nullable=True)


class Phase(Base):
    """A unit of work of a run that is done (resumability): e.g. ``neurons``, ``scan:explain``,
    ``prompts:L3N12``, ``pairs``, ``explain:baseline:PAIR``, ``ablation:zero:PAIR``."""

    __tablename__ = "phases"
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    seconds: Mapped[float] = mapped_column(Float, default=0.0)
    stats: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    finished_at: Mapped[datetime] = mapped_column(DateTime)


class Neuron(Base):
    """Every neuron of every scanned layer (so any of them has a page); ``kind`` says whether it
    is a selected next-token neuron, a random baseline neuron, or neither."""

    __tablename__ = "neurons"
    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    layer: Mapped[int] = mapped_column(Integer)
    neuron: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(12), default="other")  # next_token|random|other
    rank: Mapped[int | None] = mapped_column(Integer, nullable=True)  # rank by congruence in layer
    token_id: Mapped[int | None] = mapped_column(Integer, nullable=True)  # argmax_t W_out[l,i]·W_U[:,t]; None: not recorded (imported)
    token: Mapped[str] = mapped_column(Text)
    congruence: Mapped[float] = mapped_column(Float)
    top_tokens: Mapped[list] = mapped_column(JSON)  # [[token_id, token, congruence], ...] top 10
    max_act: Mapped[float | None] = mapped_column(Float, nullable=True)  # best explain-split act
    status: Mapped[str | None] = mapped_column(String(40), nullable=True)  # e.g. no_activating_prompt
    best_score: Mapped[float | None] = mapped_column(Float, nullable=True)  # best E of its pairs
    __table_args__ = (UniqueConstraint("run_id", "layer", "neuron"),
                      Index("ix_neurons_run_kind", "run_id", "kind", "congruence"),
                      Index("ix_neurons_run_token", "run_id", "token"))


class Document(Base):
    """A scanned document (only those in some neuron's top-k are stored)."""

    __tablename__ = "documents"
    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    split: Mapped[str] = mapped_column(String(10))  # explain|heldout
    idx: Mapped[int] = mapped_column(Integer)  # index in the split
    text: Mapped[str] = mapped_column(Text)
    __table_args__ = (UniqueConstraint("run_id", "split", "idx"),)


class TopActivation(Base):
    """Running top-k of the scan, for every neuron of every scanned layer."""

    __tablename__ = "top_activations"
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    split: Mapped[str] = mapped_column(String(10), primary_key=True)
    layer: Mapped[int] = mapped_column(Integer, primary_key=True)
    neuron: Mapped[int] = mapped_column(Integer, primary_key=True)
    rank: Mapped[int] = mapped_column(Integer, primary_key=True)  # 0 = highest
    doc_idx: Mapped[int] = mapped_column(Integer)
    act: Mapped[float] = mapped_column(Float)
    position: Mapped[int] = mapped_column(Integer)  # token position of the max (BOS = 0)


class Prompt(Base):
    """A trimmed max-activating prompt of a selected (next-token or random) neuron, with its
    head attributions at the last position."""

    __tablename__ = "prompts"
    id: Mapped[int] = mapped_column(primary_key=True)
    neuron_id: Mapped[int] = mapped_column(ForeignKey("neurons.id", ondelete="CASCADE"))
    split: Mapped[str] = mapped_column(String(10))  # explain|heldout
    rank: Mapped[int] = mapped_column(Integer)  # rank of its document in the scan's top-k
    # Imported runs leave the fields below None (and token_ids/acts/attr_* empty) where the
    # authors' files do not record them.
    doc_idx: Mapped[int | None] = mapped_column(Integer, nullable=True)
    start: Mapped[int | None] = mapped_column(Integer, nullable=True)  # prompt = [BOS] + doc_tokens_with_bos[start:end]
    end: Mapped[int | None] = mapped_column(Integer, nullable=True)  # exclusive; end - 1 = max-activating position
    text: Mapped[str] = mapped_column(Text)  # decoded prompt (without BOS)
    token_ids: Mapped[list] = mapped_column(JSON)  # without BOS
    tokens: Mapped[list] = mapped_column(JSON)  # token strings, without BOS
    acts: Mapped[list] = mapped_column(JSON)  # neuron act at each token, without BOS
    act: Mapped[float | None] = mapped_column(Float, nullable=True)  # act at the last token of the trimmed prompt
    doc_act: Mapped[float | None] = mapped_column(Float, nullable=True)  # act at the same token in the full document
    attr_raw: Mapped[list] = mapped_column(JSON)  # [attn_layer][head], paper's score
    attr_ln: Mapped[list] = mapped_column(JSON)  # [attn_layer][head], LN-aware score
    other_ln: Mapped[dict] = mapped_column(JSON)  # LN-aware non-head contributions
    pre: Mapped[float | None] = mapped_column(Float, nullable=True)  # hook_pre at the last token
    active: Mapped[list] = mapped_column(JSON)  # ["L0H3", ...] by the run's rule (raw score); top-k: largest first
    neuron: Mapped[Neuron] = relationship()
    __table_args__ = (UniqueConstraint("neuron_id", "split", "rank"),
                      Index("ix_prompts_neuron", "neuron_id", "split", "rank"))


class Pair(Base):
    """A (neuron, head) pair over the neuron's explain-split prompts; ``kept`` when the head is
    active on ``pair_min_fraction``..``pair_max_fraction`` of them (paper: 25%-75%)."""

    __tablename__ = "pairs"
    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    neuron_id: Mapped[int] = mapped_column(ForeignKey("neurons.id", ondelete="CASCADE"))
    head_layer: Mapped[int] = mapped_column(Integer)
    head: Mapped[int] = mapped_column(Integer)
    n_prompts: Mapped[int] = mapped_column(Integer)
    n_active: Mapped[int] = mapped_column(Integer)
    active_fraction: Mapped[float] = mapped_column(Float)
    mean_attr_raw: Mapped[float | None] = mapped_column(Float, nullable=True)  # None: not recorded
    mean_attr_ln: Mapped[float | None] = mapped_column(Float, nullable=True)
    kept: Mapped[bool] = mapped_column(Boolean)
    neuron: Mapped[Neuron] = relationship()
    __table_args__ = (UniqueConstraint("neuron_id", "head_layer", "head"),
                      Index("ix_pairs_head", "run_id", "head_layer", "head"),
                      Index("ix_pairs_kept", "run_id", "kept"))


class LLMCall(Base):
    """Every LLM request and its response, keyed by a hash of the request (the API key is
    never part of it), so a re-run sends nothing already answered."""

    __tablename__ = "llm_calls"
    request_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    request: Mapped[dict] = mapped_column(JSON)
    response: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    status: Mapped[str] = mapped_column(String(20))  # ok|failed
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime)


class Explanation(Base):
    """An explanation of when a head is active for a neuron, and its explanation score
    ``E = ½(TPR + TNR)`` on held-out prompts (paper §4.4)."""

    __tablename__ = "explanations"
    id: Mapped[int] = mapped_column(primary_key=True)
    pair_id: Mapped[int] = mapped_column(ForeignKey("pairs.id", ondelete="CASCADE"))
    explainer: Mapped[str] = mapped_column(String(100))  # "baseline" or "openai:<model>"
    status: Mapped[str] = mapped_column(String(20))  # ok|failed|single_class (ok may have score None: undefined E)
    text: Mapped[str | None] = mapped_column(Text, nullable=True)
    prompt: Mapped[str | None] = mapped_column(Text, nullable=True)  # the request shown to it
    settings: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    score: Mapped[float | None] = mapped_column(Float, nullable=True)  # E, None if single class
    tpr: Mapped[float | None] = mapped_column(Float, nullable=True)
    tnr: Mapped[float | None] = mapped_column(Float, nullable=True)
    n_pos: Mapped[int] = mapped_column(Integer, default=0)
    n_neg: Mapped[int] = mapped_column(Integer, default=0)
    n_unparsed: Mapped[int] = mapped_column(Integer, default=0)  # answers other than Yes/No
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    pair: Mapped[Pair] = relationship()
    __table_args__ = (UniqueConstraint("pair_id", "explainer"),)


class Classification(Base):
    """The classifier's answer on one held-out prompt for one explanation."""

    __tablename__ = "classifications"
    explanation_id: Mapped[int] = mapped_column(ForeignKey("explanations.id", ondelete="CASCADE"),
                                                primary_key=True)
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompts.id", ondelete="CASCADE"),
                                           primary_key=True)
    truth: Mapped[bool] = mapped_column(Boolean)  # head active on the prompt
    answer: Mapped[str] = mapped_column(Text)  # raw answer
    predicted: Mapped[bool | None] = mapped_column(Boolean, nullable=True)  # None: not Yes/No


class Ablation(Base):
    """One held-out prompt of a pair with the pair's head ablated (paper §5.4)."""

    __tablename__ = "ablations"
    pair_id: Mapped[int] = mapped_column(ForeignKey("pairs.id", ondelete="CASCADE"), primary_key=True)
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompts.id", ondelete="CASCADE"),
                                           primary_key=True)
    method: Mapped[str] = mapped_column(String(10), primary_key=True)  # zero|mean
    active: Mapped[bool] = mapped_column(Boolean)
    act_clean: Mapped[float] = mapped_column(Float)
    act_ablated: Mapped[float] = mapped_column(Float)
    prob_clean: Mapped[float] = mapped_column(Float)  # softmax prob of the neuron's token
    prob_ablated: Mapped[float] = mapped_column(Float)
    drop: Mapped[float] = mapped_column(Float)  # prob_clean - prob_ablated
