"""Settings of the web explorer, in one pydantic-settings class.

Every field is an option of ``lookups serve`` (``--token-cap 128``), can be set in the
environment with the prefix ``LOOKUPS_`` shared with the precompute job (``LOOKUPS_TOKEN_CAP=128``,
``LOOKUPS_DB_URL=...``), or passed to ``create_app(**overrides)``. ``lookups config`` prints them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from context_lookups.precompute.core.resources import resource_dir


class WebSettings(BaseSettings):
    """The effective settings of one server process."""

    model_config = SettingsConfigDict(env_prefix="LOOKUPS_", extra="ignore")

    db_url: str = Field("sqlite:///lookups.db", description="SQLAlchemy URL of the database, "
                        "opened read-only.")
    token_cap: int = Field(256, ge=1, description="Longest live prompt, in tokens (without BOS); "
                           "longer prompts get a 422.")
    live_cache_size: int = Field(256, ge=0, description="Recent live results kept in memory "
                                 "(LRU keyed by run, neuron, prompt, ablated heads, position).")
    max_batch: int = Field(16, ge=1, description="Most queued live requests (any neurons, any "
                           "ablated heads) run as one batched pass.")
    max_batch_tokens: int = Field(4096, ge=1, description="Most padded tokens in one batched "
                                  "live pass (bounds its memory).")
    live_queue: int = Field(1024, ge=1, description="Most live requests waiting for the model; "
                            "beyond, a 503 asks to retry.")
    preload: bool = Field(True, description="Load every run's model at server start, in the "
                          "background (/healthz says when it is ready); else on the first live "
                          "request.")
    page_size: int = Field(50, ge=1, le=500, description="Default rows per page of the neuron list.")
    max_page_size: int = Field(500, ge=1, description="Largest rows per page a client may ask for.")
    top_docs: int = Field(10, ge=1, description="Top documents shown for an unselected neuron.")
    doc_window: int = Field(24, ge=1, description="Tokens shown before the max-activating token "
                            "of a top document.")
    device: str = Field("auto", description="Torch device of the live model: auto (cuda, else "
                        "mps, else cpu), cpu, cuda, cuda:N or mps.")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="Dtype of the "
                                                             "live model's weights and passes.")
    torch_threads: int | None = Field(1, ge=1, description="Intra-op threads of torch in the "
                                      "live model process. Passes are serialised, and on a small "
                                      "model one thread is many times faster than several competing "
                                      "for busy cores; one also leaves a core to the web process on "
                                      "a 2-core machine. None: torch's default.")
    live_restarts: int = Field(3, ge=0, description="Times the live model process is restarted "
                               "within a minute after it dies (its waiting requests get a 503); "
                               "once more and live passes are off until the server restarts.")
    templates_dir: Path = Field(default_factory=lambda: resource_dir("context_lookups.app", "templates"),
                                description="Jinja2 templates directory.")
    static_dir: Path = Field(default_factory=lambda: resource_dir("context_lookups.app", "static"),
                             description="Static files directory (CSS, JS, vendored htmx and Swagger UI).")
    model_paths: dict[str, str] = Field(default_factory=dict, description="Override where a "
                                        "run's model is loaded from: {run slug: name or dir}.")
