"""Settings of the web explorer, in one pydantic-settings class.

Every field is an option of ``lookups serve`` (``--token-cap 128``), can be set in the
environment with the prefix ``LOOKUPS_`` shared with the precompute job (``LOOKUPS_TOKEN_CAP=128``,
``LOOKUPS_DB_URL=...``), or passed to ``create_app(**overrides)``. ``lookups config`` prints them.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from precompute.resources import resource_dir


class WebSettings(BaseSettings):
    """The effective settings of one server process."""

    model_config = SettingsConfigDict(env_prefix="LOOKUPS_", extra="ignore")

    db_url: str = Field("sqlite:///lookups.db", description="SQLAlchemy URL of the database, "
                        "opened read-only.")
    token_cap: int = Field(256, ge=1, description="Longest live prompt, in tokens (without BOS); "
                           "longer prompts get a 422.")
    live_cache_size: int = Field(256, ge=0, description="Recent live results kept in memory "
                                 "(LRU keyed by run, neuron, prompt, ablated heads, position).")
    max_batch: int = Field(16, ge=1, description="Most concurrent live requests (same neuron and "
                           "ablated heads) run as one batched pass.")
    page_size: int = Field(50, ge=1, le=500, description="Default rows per page of the neuron list.")
    max_page_size: int = Field(500, ge=1, description="Largest rows per page a client may ask for.")
    top_docs: int = Field(10, ge=1, description="Top documents shown for an unselected neuron.")
    doc_window: int = Field(24, ge=1, description="Tokens shown before the max-activating token "
                            "of a top document.")
    device: str = Field("cpu", description="Torch device of the live model.")
    torch_threads: int | None = Field(1, ge=1, description="Intra-op threads of torch in the "
                                      "server process (set when the first model loads). Passes are "
                                      "serialised, and on a small model one thread is many times "
                                      "faster than several competing for busy cores. None: torch's "
                                      "default.")
    templates_dir: Path = Field(default_factory=lambda: resource_dir("app", "templates"), description="Jinja2 templates directory.")
    static_dir: Path = Field(default_factory=lambda: resource_dir("app", "static"), description="Static files directory (CSS, JS, "
                             "vendored htmx and Swagger UI).")
    model_paths: dict[str, str] = Field(default_factory=dict, description="Override where a "
                                        "run's model is loaded from: {run slug: name or dir}.")
