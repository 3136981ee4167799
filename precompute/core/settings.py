"""Every setting of the precompute job, in one pydantic-settings class.

Each field can be given on the command line (``lookups precompute --n-per-layer 10``) or in the
environment with the prefix ``LOOKUPS_`` (``LOOKUPS_N_PER_LAYER=10``). Defaults are the paper's
(Neo, Cohen & Barez 2024, Feb 2024 run; docs/method.md) unless a field says otherwise.
``lookups config`` prints the effective values.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

EMBEDDED_DIR = Path(__file__).resolve().parent.parent / "embedded"
EMBEDDED_MODEL = str(EMBEDDED_DIR / "model")
EMBEDDED_CORPUS = str(EMBEDDED_DIR / "corpus")
DEFAULT_DB_URL = "sqlite:///lookups.db"
SERVE_HOST, SERVE_PORT = "127.0.0.1", 8000  # where `lookups serve` listens unless told otherwise

# Fields that change what is computed. A run remembers them; re-running with other values is an
# error (SettingsMismatch) rather than a silent overwrite. Explainer and ablation settings are
# recorded on their own rows instead, so they can be re-run with other values on the same run.
SCIENCE_FIELDS = (
    "model", "dataset", "layers", "n_per_layer", "reject_tokens", "reject_numeric", "seed",
    "n_docs", "context_tokens", "top_k", "act_ratio", "max_prompt_tokens", "heads_upto",
    "active_rule", "active_sigma", "active_topk", "pair_min_fraction", "pair_max_fraction",
    "n_random", "pair_min_prompts", "knockout_top_m",
)

# Science fields added after runs were first stored, with the value that reproduces what a run
# stored without them computed. ``Settings.of_run`` fills them in, and ``science_hash`` leaves a
# field out at that value, so an older run still reads back and resumes as it was computed.
ADDED_FIELDS = {"pair_min_prompts": 1, "knockout_top_m": 0}

# A run's name is the first segment of its pages' URLs: lower-case ASCII letters, digits, '.', '_'
# and '-', starting with a letter or digit, at most 100 characters (the form of a name derived from
# a model folder, precompute.model.loading.model_slug), and not a path the server itself serves.
SLUG = re.compile(r"[a-z0-9][a-z0-9._-]{0,99}")
RESERVED_SLUGS = ("static",)


def slug_problem(name: str) -> str | None:
    """Why ``name`` cannot name a run (None: it can), in words that say what to use."""
    if not SLUG.fullmatch(name):
        fixed = re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("-._")[:100]
        hint = f" (e.g. {fixed!r})" if fixed and SLUG.fullmatch(fixed) and fixed not in RESERVED_SLUGS else ""
        return (f"a run name is the first part of its pages' URLs: use lower-case ASCII letters, digits, "
                f"'.', '_' and '-', starting with a letter or digit, at most 100 characters{hint}")
    if name in RESERVED_SLUGS:
        return f"{name!r} is a path the server uses for its own files: choose another run name"
    return None


MAX_SEED = 2**32 - 1  # numpy's legacy seeding and datasets' splits accept no more
MAX_TOP_K = 1000  # the paper kept 20; each kept document is trimmed and attributed


class Settings(BaseSettings):
    """The effective settings of one precompute run (paper defaults)."""

    # allow_inf_nan=False: `--active-sigma nan` (or inf) is refused rather than keeping 0 pairs
    model_config = SettingsConfigDict(env_prefix="LOOKUPS_", extra="ignore", allow_inf_nan=False)

    # --- inputs and output -------------------------------------------------------------------
    model: str = Field(EMBEDDED_MODEL, description="TransformerLens / Hugging Face model name "
                       "(gpt2, pythia-160m, ...) or a local Hugging Face directory. Default: the "
                       "embedded model shipped with the package.")
    dataset: str = Field(EMBEDDED_CORPUS, description="Hugging Face dataset name "
                         "(NeelNanda/pile-10k), a local .jsonl[.gz] file or a directory holding "
                         "explain/heldout .jsonl.gz splits. Default: the embedded scan corpus.")
    db_url: str = Field(DEFAULT_DB_URL, description="SQLAlchemy URL of the database: SQLite "
                        "(default: lookups.db in the working directory) or PostgreSQL "
                        "(postgresql+psycopg://USER:PASSWORD@HOST:PORT/DB).")
    run_name: str | None = Field(None, description="Name (URL slug) of the run; default: derived "
                                 "from the model name. Use another name to keep a second run of "
                                 "the same model with other settings. Lower-case ASCII letters, "
                                 "digits, '.', '_' and '-' (at most 100; not 'static').")
    device: str = Field("auto", description="Torch device of the model: auto (cuda, else mps, "
                        "else cpu), cpu, cuda, cuda:N or mps.")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="Dtype of "
                                                             "the model's weights and forward "
                                                             "passes; statistics stay float32.")

    # --- where the model work runs (not part of the run's identity: the rows are the same) -----
    ray: str | None = Field(None, description="Run the model work on Ray: 'local' starts a local "
                            "cluster, 'auto' joins the one running on this machine, else a Ray "
                            "address (HOST:PORT or ray://HOST:PORT). Default: this process.")
    backend: Literal["auto", "bridge", "fast"] = Field("auto", description="How the model is "
                                                      "run: auto (the fast backend of the "
                                                      "architecture if there is one, else the "
                                                      "bridge), bridge (TransformerBridge hook "
                                                      "points, any architecture TransformerLens "
                                                      "supports) or fast (hooks on the plain "
                                                      "Hugging Face model; GPT-2).")
    ray_workers: int | None = Field(None, ge=1, description="Ray workers, each holding the model; "
                                    "default one per GPU of the cluster, or one per node without "
                                    "GPUs.")
    summary_json: Path | None = Field(None, description="Write the finished run's full summary "
                                      "(every count, the paper's tables, the verdict with its "
                                      "intervals, seconds per phase) to this JSON file; the command "
                                      "itself ends with a short one. The run keeps it too "
                                      "(runs.summary). Default: not written.")

    # --- §1 next-token neurons ---------------------------------------------------------------
    layers: list[int] | None = Field(None, description="0-based MLP layers to analyse; default "
                                     "the last min(3, n_layers-1) layers.")
    n_per_layer: int = Field(20, ge=1, description="Next-token neurons kept per layer (top by "
                             "congruence W_out·W_U).")
    reject_tokens: list[str] = Field(default_factory=list, description="Token strings never "
                                     "used as a neuron's token (glitch tokens).")
    reject_numeric: bool = Field(True, description="Reject tokens that are numbers or "
                                 "punctuation only.")
    n_random: int | None = Field(None, ge=0, description="Random baseline neurons per layer; default: "
                                 "n_per_layer; 0: no random baseline (as in imported authors' runs).")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="Seed of the random-neuron draw and of "
                      "every RNG (0 to 2**32 - 1, what every RNG used accepts).")

    # --- §2 max-activating prompts -----------------------------------------------------------
    n_docs: int | None = Field(None, ge=1, description="Use at most this many documents of each "
                               "split (default: all).")
    context_tokens: int | None = Field(None, ge=2, description="Tokens per document incl. BOS "
                                       "(default: the model's context length).")
    batch_size: int = Field(16, ge=1, description="Documents per forward pass in the scan.")
    neurons_per_pass: int = Field(8, ge=1, description="Selected neurons whose trimming and "
                                  "attribution share batched forward passes (a resumed job "
                                  "recomputes an interrupted group whole).")
    top_k: int = Field(20, ge=1, le=MAX_TOP_K, description="Distinct trimmed prompts kept per neuron "
                       "and split (documents that trim to the same tokens are one prompt); the scan keeps "
                       "half as many top documents again to draw them from (at most "
                       f"{MAX_TOP_K}; more than a split's documents keeps them all).")
    act_ratio: float = Field(0.8, gt=0, le=1, description="Trimming keeps the latest start at "
                             "which the neuron still reaches this fraction of its activation.")
    max_prompt_tokens: int = Field(100, ge=2, description="Trimmed prompts of this many tokens "
                                   "or more are dropped.")

    # --- §3 head attribution -----------------------------------------------------------------
    heads_upto: Literal["le", "lt"] = Field("le", description="Heads of layers <= the neuron's "
                                            "layer (paper's formula) or < (authors' code).")
    active_rule: Literal["2sigma", "topk"] = Field("2sigma", description="Active heads: "
                                                   "A > mean + k·std (Feb 2024) or top-k (Oct 2023).")
    active_sigma: float = Field(2.0, description="k of the sigma rule.")
    active_topk: int = Field(3, ge=1, description="k of the top-k rule.")
    pair_min_fraction: float = Field(0.25, ge=0, le=1, description="Keep a (neuron, head) pair "
                                     "when the head is active on at least this fraction...")
    pair_max_fraction: float = Field(0.75, ge=0, le=1, description="...and at most this fraction "
                                     "of the neuron's prompts.")
    pair_min_prompts: int = Field(10, ge=1, description="Keep a neuron's pairs only when it has at "
                                  "least this many explain prompts (the project's addition: the "
                                  "paper's neurons had 20-30; below 10 the active fraction moves in "
                                  "steps over 10 points and the 0.25-0.75 filter means little). "
                                  "1: no minimum (runs stored before this setting).")
    knockout_top_m: int = Field(3, ge=0, le=100, description="Attention knockout (the project's "
                                "causal check of each look-up, docs/method.md §3): on every stored "
                                "look-up, knock out the prompt's top m context sources by contribution, "
                                "one at a time, then the attention sink; 0: no knockout (runs stored "
                                "before this setting).")

    # --- §4-5 explanations (recorded per explanation, not part of the run's identity) ----------
    explainer: Literal["baseline", "openai", "none"] = Field("baseline", description="Explainer "
                                                             "run by precompute.")
    heldout_per_pair: int = Field(20, ge=1, description="Held-out prompts scored per pair "
                                  "(the authors used 20).")
    llm_base_url: str | None = Field(None, description="OpenAI-compatible endpoint (default: "
                                     "the openai package's, i.e. OPENAI_BASE_URL or OpenAI).")
    llm_model: str = Field("gpt-4-1106-preview", description="Chat model for explanations and "
                           "classification (authors: gpt-4-1106-preview).")
    llm_api_key_env: str = Field("OPENAI_API_KEY", description="Environment variable holding the "
                                 "API key (the key itself is never stored or logged).")
    llm_temperature: float | None = Field(None, description="Sampling temperature (None: the "
                                          "endpoint's default, as the authors).")
    llm_max_tokens: int = Field(200, ge=1, description="Max tokens of an explanation.")
    llm_concurrency: int = Field(4, ge=1, le=256, description="Concurrent LLM requests (one "
                                 "thread each).")
    llm_timeout: float = Field(60.0, gt=0, description="Seconds per LLM request.")
    llm_max_retries: int = Field(4, ge=0, description="Retries per request (429/5xx/timeouts).")

    # --- §6 ablation -------------------------------------------------------------------------
    ablation: Literal["zero", "mean", "none"] = Field("zero", description="Ablate a head's value "
                                                      "vectors with zeros (paper) or their mean "
                                                      "over the scan corpus.")

    @field_validator("run_name")
    @classmethod
    def _run_name_is_a_slug(cls, v: str | None) -> str | None:
        if v is not None and (why := slug_problem(v)):
            raise ValueError(why)
        return v

    @model_validator(mode="after")
    def _pair_fractions_in_order(self) -> Settings:
        if self.pair_min_fraction > self.pair_max_fraction:
            raise ValueError(f"--pair-min-fraction {self.pair_min_fraction} is above "
                             f"--pair-max-fraction {self.pair_max_fraction}: no pair could be kept. "
                             f"Give a minimum at most the maximum (paper: 0.25 and 0.75).")
        return self

    @classmethod
    def of_run(cls, stored: dict | None) -> Settings:
        """The settings a run was computed with, read back from its stored ``science()`` dict
        (``Run.settings``) through this model: the environment is not consulted, and fields a
        run does not store (explainer, ablation, paths) keep their defaults.

        Raises:
            pydantic.ValidationError: the stored dict no longer fits this model (a field's type
                changed); a test keeps stored runs and this class in step.
        """
        return cls.model_validate({**ADDED_FIELDS, **(stored or {})})

    def science(self) -> dict:
        """The fields that define a run (SCIENCE_FIELDS), as a JSON-able dict."""
        out = {k: getattr(self, k) for k in SCIENCE_FIELDS}
        # The embedded model and corpus are named by role, not by where the package lies.
        if out["model"] == EMBEDDED_MODEL:
            out["model"] = "embedded"
        if out["dataset"] == EMBEDDED_CORPUS:
            out["dataset"] = "embedded"
        return out

    def science_hash(self) -> str:
        """SHA-256 (hex, 16 chars) of :meth:`science`; equal hashes mean the same computation."""
        sci = {k: v for k, v in self.science().items() if not (k in ADDED_FIELDS and v == ADDED_FIELDS[k])}
        blob = json.dumps(sci, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]
