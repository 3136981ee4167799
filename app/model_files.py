"""Whether a run's model is on this server, and where, decided from local files only (never the
hub), so that the answer is known at start and no request ever waits on the network. Both halves
of the explorer read it: the pages load the run's tokenizer from there, the live half its model.

A run's model source is a local Hugging Face directory (the embedded model, a
``LOOKUPS_MODEL_PATHS`` entry, a ``--model`` directory) or a hub name (``gpt2``): a name is
looked up in the local Hugging Face cache with ``local_files_only=True``, and the live engine
then loads the cached directory itself.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from context_lookups.precompute.core.settings import EMBEDDED_MODEL

_WEIGHTS = ("*.safetensors", "pytorch_model*.bin")


def _complete(d: Path) -> str | None:
    """Why directory ``d`` cannot hold a loadable model (None when it has a config, weights
    and a tokenizer)."""
    if not (d / "config.json").is_file():
        return "it has no config.json"
    if not any(any(d.glob(p)) for p in _WEIGHTS):
        return "it has no weights"
    if not any((d / f).is_file() for f in ("tokenizer.json", "vocab.json", "tokenizer.model")):
        return "it has no tokenizer"
    return None


def local_model(source: str) -> tuple[str | None, str | None]:
    """``(directory to load from, None)`` when ``source``'s model is on this machine, else
    ``(None, why not)`` (one short sentence for a web page: no command-line advice).

    Only the local file system is read: a hub name is looked up in the local Hugging Face
    cache, and a model that is not there counts as absent even when the hub could be reached.
    """
    if os.path.isdir(source):
        why = _complete(Path(source))
        if why is None:
            return source, None
        return None, f"the model directory {source} is incomplete ({why})"
    if os.path.sep in source and not re.match(r"^[\w.-]+/[\w.-]+$", source):
        return None, f"the model directory {source} is not on this server"
    try:
        from huggingface_hub import snapshot_download

        path = snapshot_download(repo_id=source, local_files_only=True)
    except Exception:  # not cached (LocalEntryNotFoundError), or not a valid repo id
        return None, f"the model {source} is not on this server"
    why = _complete(Path(path))
    if why is None:
        return path, None
    return None, f"the model {source} is only partly on this server ({why})"


class LocalModels:
    """:func:`local_model` of each model source, decided once per source (one per user: the
    pages' run contexts and the live engine each keep their own)."""

    def __init__(self):
        self._got: dict[str, tuple[str | None, str | None]] = {}

    def __call__(self, source: str) -> tuple[str | None, str | None]:
        got = self._got.get(source)
        if got is None:
            got = self._got[source] = local_model(source)
        return got


def model_source(run, settings) -> str:
    """Where ``run``'s model is loaded from (a name or a local directory): the
    ``settings.model_paths`` entry of the run's slug (:class:`app.settings.WebSettings`), the
    embedded model, or the model name the run stored."""
    if run.slug in settings.model_paths:
        return settings.model_paths[run.slug]
    return EMBEDDED_MODEL if run.model_name == "embedded" else run.model_name
